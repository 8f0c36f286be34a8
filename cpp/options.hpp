// The engine's vocabularies, shared by the C++ engine and the CUDA backend. The names users type
// live in python/ntkal/options.py, which maps each one to these values once (bindings take enums).
#pragma once

namespace ntkal {

enum class SketchKind { Gaussian = 0, SparseSign = 1 };
enum class Precision { Float32 = 0, Float64 = 1 };
enum class DistanceMethod { Lcmd = 0, MaxDist = 1 };
// GPU scoring GEMM arithmetic: FP32 SIMT, or tensor cores with TF32 / BF16 inputs and FP32 accumulation.
enum class Matmul { Float32 = 0, TF32 = 1, BF16 = 2 };

}  // namespace ntkal
