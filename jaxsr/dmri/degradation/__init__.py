"""How a scan loses resolution: the training degradation, point-spread functions per axis,
and deciding a scan's PSF (`--psf auto`)."""
