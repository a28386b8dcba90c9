// The scorer's Backend over TensorRT 10.x / 11.x engines (the package's engines/, built by
// `fineparser-export --engine`): IRuntime::deserializeCudaEngine, one IExecutionContext per engine,
// named tensors (setInputShape / setTensorAddress), enqueueV3 on a CUDA stream.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "scoring.hpp"

namespace fineparser {

// TensorRT or CUDA refused something (the message names the engine file or the call).
class TensorRTError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The linked TensorRT library's version, "10.3.0".
std::string tensorrt_version();
// Name and compute capability ("sm87") of a CUDA device; TensorRTError when there is none.
std::pair<std::string, std::string> cuda_device(int device);

class TensorRTBackend : public Backend {
 public:
  TensorRTBackend(const std::string& encoder_engine, const std::string& pair_engine, int device = 0);
  ~TensorRTBackend() override;
  TensorRTBackend(const TensorRTBackend&) = delete;
  TensorRTBackend& operator=(const TensorRTBackend&) = delete;

  std::string name() const override { return "tensorrt"; }
  std::string description() const override { return description_; }
  QueryFeatures encode(const std::vector<std::uint8_t>& frames) override;
  PairOutputs pair_head(const QueryFeatures& query, const ExemplarBank& bank,
                        const std::vector<std::int64_t>& indices) override;

  // Checks the bank's dimensions against the pair head's inputs (a bank from another export is refused).
  void check_bank(const ExemplarBank& bank) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string description_;
};

}  // namespace fineparser
