"""Evaluations of trained models beyond the comparison: real scans, DTI errors against a
truth, the uncertainty map's rank correlation."""
