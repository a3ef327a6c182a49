"""DVT agents: the word agent (bytes -> vector -> bytes), the sentence agent (word vectors ->
vector -> word vectors) and the stack that compresses text to a tree of vectors and back."""
from craft.agents.sentence import SentenceAgent, SentenceAgentConfig
from craft.agents.stack import AgentStack, Compressed, budget_batches
from craft.agents.word import WordAgent, WordAgentConfig

__all__ = ["WordAgent", "WordAgentConfig", "SentenceAgent", "SentenceAgentConfig", "AgentStack", "Compressed",
           "budget_batches"]
