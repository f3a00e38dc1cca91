"""Few-step generation by distillation from a trained run: progressive distillation (Salimans & Ho 2022) and
consistency distillation (Song et al. 2023). Each is the Trainer's "method" (``compute_loss(student, x0)``
builds the target from the frozen teacher), so a distillation trains, checkpoints and resumes like any run."""

from diffusion.distill.consistency import ConsistencyDistillation
from diffusion.distill.progressive import DistilledDDIM, ProgressiveDistillation
from diffusion.distill.session import DistillSession
from diffusion.distill.teacher import TeacherSolver, ddim_teacher_step, teacher_solver

__all__ = [
    "ConsistencyDistillation",
    "DistillSession",
    "DistilledDDIM",
    "ProgressiveDistillation",
    "TeacherSolver",
    "ddim_teacher_step",
    "teacher_solver",
]
