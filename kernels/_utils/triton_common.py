"""``@triton.jit`` helpers and constants shared by the ops' Triton kernels (no launch code here)."""
import triton
import triton.language as tl

# the smallest logit of a row before it has seen a valid key; finite so that no exp2(-inf + inf) appears
NEG_INIT = tl.constexpr(-1.0e30)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def dot(a, b, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    # the interpreter multiplies raw bf16 bit patterns in tl.dot: upcast there
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)

