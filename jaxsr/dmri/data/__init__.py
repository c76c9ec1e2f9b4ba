"""The data of the dMRI family: the embedded phantom, HCP-layout and BIDS subjects, gradient
tables, training patches and domain-randomised images."""
