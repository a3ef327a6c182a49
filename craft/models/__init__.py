"""Language models: config and presets, the Model → GenerativeModel → LanguageModel hierarchy."""
from craft.models.base import GenerativeModel, Model
from craft.models.config import PRESETS, ModelConfig
from craft.models.transformer import Attention, Block, LanguageModel, RMSNorm, apply_rope, rope_angles

__all__ = ["Model", "GenerativeModel", "LanguageModel", "ModelConfig", "PRESETS", "Attention", "Block", "RMSNorm",
           "apply_rope", "rope_angles"]
