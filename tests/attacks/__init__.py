"""Tests of bnnmip.attacks: PGD, IProp, the MILP attack, minimal eps and the attack result."""
