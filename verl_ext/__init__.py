"""Extensions to verl 0.9.1 used by the LTE recipe: loss, math reward, platform adapters."""
