"""Transform directives: a decoder of continuous instructions with return probabilities, result
slots and ACT halting (:mod:`.directive`), the decoder (:mod:`.decoder`), the transform engine
(:mod:`.engine`), losses (:mod:`.losses`), tasks (:mod:`.tasks`) and training (:mod:`.train`)."""
from craft.directives.directive import DirectiveState, TransformDirective, directive_reference, directive_step, run_directive

__all__ = ["DirectiveState", "TransformDirective", "directive_reference", "directive_step", "run_directive"]
