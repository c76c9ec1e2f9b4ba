"""Models: the RDN3D encoder, the implicit MLP decoder, the CSR-dMRI model and the fixed-scale
baselines (DCSRN, ResCNN3D) that work on LR volumes interpolated onto the HR grid."""

from jaxsr.dmri.models.baselines import DCSRN, ResCNN3D
from jaxsr.dmri.models.csr_dmri import CSRdMRI, init_params
from jaxsr.dmri.models.factory import build_model, is_implicit
from jaxsr.dmri.models.mlp import ImplicitMLP
from jaxsr.dmri.models.rdn import RDN3D

__all__ = ["CSRdMRI", "DCSRN", "ImplicitMLP", "RDN3D", "ResCNN3D", "build_model", "init_params",
           "is_implicit"]
