"""Whether a run directory still holds what its stages wrote, and whether a run can start at all.

- :mod:`~leafgen.integrity.outputs`: the file list a completion marker records, and the checks against it;
- :mod:`~leafgen.integrity.verify`: ``leafgen verify RUN_DIR [--fix]``;
- :mod:`~leafgen.integrity.preflight`: every stage check and every outside input, before the first stage.
"""
