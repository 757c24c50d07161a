"""The one prompt template used for training, validation and evaluation (chosen by name, recorded per row).

Templates are plain text with a `{problem}` field, filled by replacement (LaTeX braces elsewhere stay as they are).
A template may come with its own system turn (`TEMPLATE_SYSTEM_PROMPTS`), used unless a system prompt is given.
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
    # LUFFY's training prompt (the LUFFY arm, lte.mode=luffy): the bare problem under LUFFY's system prompt.
    "luffy": "{problem}",
}

# The system prompt of LUFFY's training set (Openr1-Math-46k-8192), as LUFFY's data script writes it
# (LUFFY luffy/scripts/data/prepare_openr1_data_spec_sys.py, `instruction`). (ctx)
LUFFY_SYSTEM_PROMPT = (
    "Your task is to follow a systematic, thorough reasoning process before providing the final solution. This "
    "involves analyzing, summarizing, exploring, reassessing, and refining your thought process through multiple "
    "iterations. Structure your response into two sections: Thought and Solution. In the Thought section, present "
    'your reasoning using the format: "<think>\n {thoughts} </think>\n". Each thought should include detailed '
    'analysis, brainstorming, verification, and refinement of ideas. After "</think>\n," in the Solution section, '
    "provide the final, logical, and accurate answer, clearly derived from the exploration in the Thought section. "
    "If applicable, include the answer in \\boxed{} for closed-form results like multiple choices or mathematical "
    "solutions."
)
TEMPLATE_SYSTEM_PROMPTS: dict[str, str] = {"luffy": LUFFY_SYSTEM_PROMPT}
DEFAULT_TEMPLATE = "boxed_step_by_step"


def render_problem(problem: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The user turn: `template` (a name in PROMPT_TEMPLATES) with `{problem}` filled in."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {sorted(PROMPT_TEMPLATES)}")
    return PROMPT_TEMPLATES[template].replace("{problem}", problem)


def build_prompt(problem: str, template: str = DEFAULT_TEMPLATE, system_prompt: str | None = None) -> list[dict]:
    """verl's chat list for one problem: a system turn (``system_prompt``, else the template's own, if any), then
    the templated problem as the user turn."""
    system_prompt = system_prompt or TEMPLATE_SYSTEM_PROMPTS.get(template)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": render_problem(problem, template)})
    return messages
