"""LTE (Learning to reason from Trial and Error) as a verl 0.9.1 recipe."""
