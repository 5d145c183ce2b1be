"""The pattern of exercise ids, shared by the notebook reader and the case registry."""

import re

# Letters, digits, "_", "-" and ".", starting with a letter, digit or "_".
EXERCISE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
