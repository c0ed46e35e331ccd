// ringcomm's device kernels: elementwise reduce, scale, and fp32 <-> fp16/bf16 casts.
//
// Compiled at run time by CuPy (NVRTC) from ringcomm/native/cuda.py; no header is included,
// so the same source also builds with a plain `nvcc -c` (tests/test_gpu.py checks that).
// 16-bit floats travel as their bit patterns (unsigned short): they are widened to float,
// combined, and rounded once to nearest even, exactly like the host kernels in kernels.py.
// Every kernel is a grid-stride loop over n elements.

typedef unsigned short bits16;

__device__ __forceinline__ float bf16_to_f32(bits16 b) {
    return __uint_as_float(((unsigned int)b) << 16);
}

__device__ __forceinline__ bits16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet and a NaN
        return (bits16)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return (bits16)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(bits16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ bits16 f32_to_f16(float f) {
    bits16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// The reductions. NaN propagates through MIN and MAX, as np.minimum/np.maximum do.
template <typename T> __device__ __forceinline__ T op_sum(T a, T b) { return a + b; }
template <typename T> __device__ __forceinline__ T op_prod(T a, T b) { return a * b; }
template <typename T> __device__ __forceinline__ T op_min(T a, T b) {
    return (b < a || b != b) ? b : a;
}
template <typename T> __device__ __forceinline__ T op_max(T a, T b) {
    return (b > a || b != b) ? b : a;
}
template <typename T> __device__ __forceinline__ T op_band(T a, T b) { return a & b; }
template <typename T> __device__ __forceinline__ T op_bor(T a, T b) { return a | b; }
template <typename T> __device__ __forceinline__ T op_bxor(T a, T b) { return a ^ b; }

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); \
         i += (size_t)blockDim.x * gridDim.x)

// out[i] = out[i] (op) in[i]
#define REDUCE(OP, NAME, T)                                                              \
    extern "C" __global__ void reduce_##OP##_##NAME(T* __restrict__ out,                \
                                                    const T* __restrict__ in, size_t n) { \
        GRID_STRIDE(i, n) { out[i] = op_##OP<T>(out[i], in[i]); }                         \
    }

#define REDUCE_HALF(OP, NAME, WIDEN, NARROW)                                              \
    extern "C" __global__ void reduce_##OP##_##NAME(bits16* __restrict__ out,            \
                                                    const bits16* __restrict__ in,       \
                                                    size_t n) {                           \
        GRID_STRIDE(i, n) { out[i] = NARROW(op_##OP<float>(WIDEN(out[i]), WIDEN(in[i]))); } \
    }

#define ARITH(NAME, T) REDUCE(sum, NAME, T) REDUCE(prod, NAME, T) REDUCE(min, NAME, T) \
    REDUCE(max, NAME, T)
#define BITWISE(NAME, T) REDUCE(band, NAME, T) REDUCE(bor, NAME, T) REDUCE(bxor, NAME, T)
#define HALF(NAME, WIDEN, NARROW) REDUCE_HALF(sum, NAME, WIDEN, NARROW) \
    REDUCE_HALF(prod, NAME, WIDEN, NARROW) REDUCE_HALF(min, NAME, WIDEN, NARROW) \
    REDUCE_HALF(max, NAME, WIDEN, NARROW)

ARITH(float32, float)
ARITH(float64, double)
ARITH(int8, signed char) BITWISE(int8, signed char)
ARITH(int16, short) BITWISE(int16, short)
ARITH(int32, int) BITWISE(int32, int)
ARITH(int64, long long) BITWISE(int64, long long)
ARITH(uint8, unsigned char) BITWISE(uint8, unsigned char)
ARITH(uint16, unsigned short) BITWISE(uint16, unsigned short)
ARITH(uint32, unsigned int) BITWISE(uint32, unsigned int)
ARITH(uint64, unsigned long long) BITWISE(uint64, unsigned long long)
HALF(float16, f16_to_f32, f32_to_f16)
HALF(bfloat16, bf16_to_f32, f32_to_bf16)

// x[i] *= s (AVG's division as a multiplication by 1/size, and pre-division).
extern "C" __global__ void scale_float32(float* x, float s, size_t n) {
    GRID_STRIDE(i, n) { x[i] *= s; }
}
extern "C" __global__ void scale_float64(double* x, double s, size_t n) {
    GRID_STRIDE(i, n) { x[i] *= s; }
}
extern "C" __global__ void scale_float16(bits16* x, float s, size_t n) {
    GRID_STRIDE(i, n) { x[i] = f32_to_f16(f16_to_f32(x[i]) * s); }
}
extern "C" __global__ void scale_bfloat16(bits16* x, float s, size_t n) {
    GRID_STRIDE(i, n) { x[i] = f32_to_bf16(bf16_to_f32(x[i]) * s); }
}

// Casts, with a scale fused into the narrowing one (the DDP compression hooks' pre-division).
extern "C" __global__ void narrow_float16(const float* __restrict__ src, bits16* __restrict__ dst,
                                          float s, size_t n) {
    GRID_STRIDE(i, n) { dst[i] = f32_to_f16(src[i] * s); }
}
extern "C" __global__ void narrow_bfloat16(const float* __restrict__ src,
                                           bits16* __restrict__ dst, float s, size_t n) {
    GRID_STRIDE(i, n) { dst[i] = f32_to_bf16(src[i] * s); }
}
extern "C" __global__ void widen_float16(const bits16* __restrict__ src, float* __restrict__ dst,
                                         size_t n) {
    GRID_STRIDE(i, n) { dst[i] = f16_to_f32(src[i]); }
}
extern "C" __global__ void widen_bfloat16(const bits16* __restrict__ src,
                                          float* __restrict__ dst, size_t n) {
    GRID_STRIDE(i, n) { dst[i] = bf16_to_f32(src[i]); }
}
