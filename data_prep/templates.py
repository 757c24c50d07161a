"""The one prompt template used for training, validation and evaluation (chosen by name, recorded per row).

Templates are plain text with a `{problem}` field, filled by replacement (LaTeX braces elsewhere stay as they are).
"""

from __future__ import annotations

# The default is verl's own math example instruction (examples/data_preprocess/math_dataset.py), appended to the
# problem as the single user turn. The LTE paper does not print its prompt; this is our choice (docs/).
PROMPT_TEMPLATES: dict[str, str] = {
    "boxed_step_by_step": "{problem} Let's think step by step and output the final answer within \\boxed{}.",
    # Qwen2.5-Math's instruction, for comparison runs.
    "qwen_boxed": "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}.",
    # The bare problem (pair it with a system prompt that asks for \boxed{}).
    "problem_only": "{problem}",
}
DEFAULT_TEMPLATE = "boxed_step_by_step"


def render_problem(problem: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The user turn: `template` (a name in PROMPT_TEMPLATES) with `{problem}` filled in."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {sorted(PROMPT_TEMPLATES)}")
    return PROMPT_TEMPLATES[template].replace("{problem}", problem)


def build_prompt(problem: str, template: str = DEFAULT_TEMPLATE, system_prompt: str | None = None) -> list[dict]:
    """verl's chat list for one problem: an optional system turn, then the templated problem as the user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": render_problem(problem, template)})
    return messages
