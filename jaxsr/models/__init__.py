"""Models: the RDN3D encoder, the implicit MLP decoder and the CSR-dMRI model."""

from jaxsr.models.csr_dmri import CSRdMRI, build_model, init_params
from jaxsr.models.mlp import ImplicitMLP
from jaxsr.models.rdn import RDN3D

__all__ = ["CSRdMRI", "ImplicitMLP", "RDN3D", "build_model", "init_params"]
