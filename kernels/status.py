"""Per-patient outcome of an integration, stored as int8.

A patient with a problem is reported here and never stops or changes the others.
"""
OK = 0             # reached t1
MAX_STEPS = 1      # more than max_steps attempted steps (accepted + rejected)
STEP_UNDERFLOW = 2 # step size fell below 10 ulp of t: a blow-up or an extremely stiff patch
NON_FINITE = 3     # a non-finite initial state, parameter or derivative

NAMES = {OK: "ok", MAX_STEPS: "max_steps", STEP_UNDERFLOW: "step_underflow", NON_FINITE: "non_finite"}
