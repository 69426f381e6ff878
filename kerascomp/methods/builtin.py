"""The built-in methods, registered in one place: a new method is one file plus one line here."""
from kerascomp.methods.auto import AutoMethod
from kerascomp.methods.collaborative import CollaborativeMethod
from kerascomp.methods.correlation import CorrelationMethod
from kerascomp.methods.fga import FGAMethod
from kerascomp.methods.joint_svd import SVDMethod
from kerascomp.methods.l1 import L1Method
from kerascomp.methods.registry import register
from kerascomp.methods.tucker import TuckerMethod

for method in (FGAMethod(), CorrelationMethod(), L1Method(), SVDMethod("svd"), SVDMethod("joint_svd"), TuckerMethod(),
               CollaborativeMethod(), AutoMethod()):
    register(method, replace=True)
