#include "trt_backend.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

namespace fineparser {

namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

void check_cuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) throw TensorRTError(what + " failed: " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << message << '\n';
  }
};

std::size_t element_size(DataType type) {
  switch (type) {
    case DataType::kFLOAT:
    case DataType::kINT32:
      return 4;
    case DataType::kHALF:
    case DataType::kBF16:
      return 2;
    case DataType::kINT64:
      return 8;
    case DataType::kINT8:
    case DataType::kUINT8:
    case DataType::kBOOL:
    case DataType::kFP8:
      return 1;
    default:
      throw TensorRTError("tensor data type " + std::to_string(static_cast<int>(type)) + " is not used by the demo");
  }
}

const char* type_name(DataType type) {
  switch (type) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kUINT8: return "uint8";
    case DataType::kINT8: return "int8";
    default: return "another type";
  }
}

std::int64_t volume(const Dims& dims) {
  std::int64_t count = 1;
  for (int i = 0; i < dims.nbDims; ++i) count *= dims.d[i];
  return count;
}

std::string dims_text(const Dims& dims) {
  std::string text = "[";
  for (int i = 0; i < dims.nbDims; ++i) text += (i ? ", " : "") + std::to_string(dims.d[i]);
  return text + "]";
}

Dims make_dims(std::initializer_list<std::int64_t> values) {
  Dims dims{};
  dims.nbDims = static_cast<std::int32_t>(values.size());
  int i = 0;
  for (auto v : values) dims.d[i++] = v;
  return dims;
}

// Device memory that frees itself; grows on demand and never shrinks.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data_) cudaFree(data_);
  }
  void* reserve(std::size_t bytes, const std::string& tensor) {
    if (bytes > capacity_) {
      if (data_) check_cuda(cudaFree(data_), "cudaFree");
      data_ = nullptr;
      check_cuda(cudaMalloc(&data_, std::max<std::size_t>(bytes, 1)), "cudaMalloc for " + tensor);
      capacity_ = bytes;
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  std::size_t capacity_ = 0;
};

// One deserialized engine with its execution context; tensors are bound by name per run.
class Engine {
 public:
  Engine(const std::string& path, Logger& logger) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw TensorRTError(path + ": cannot open the engine file");
    const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger));
    if (!runtime_) throw TensorRTError("createInferRuntime failed (is libnvinfer installed correctly?)");
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
      throw TensorRTError("TensorRT " + tensorrt_version() + " cannot deserialize " + path +
                          " (built for another GPU or TensorRT version?): rebuild the engines on this machine with "
                          "`fineparser-export CKPT --out PKG --engine`");
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw TensorRTError(path + ": createExecutionContext failed (out of GPU memory?)");
    for (std::int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const std::string name = engine_->getIOTensorName(i);
      (engine_->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT ? inputs_ : outputs_).push_back(name);
    }
  }

  const std::string& path() const { return path_; }
  const std::vector<std::string>& inputs() const { return inputs_; }

  // The tensor must exist with this mode and one of the accepted data types.
  DataType require(const std::string& name, nvinfer1::TensorIOMode mode, std::initializer_list<DataType> types) const {
    if (engine_->getTensorIOMode(name.c_str()) != mode) {
      throw TensorRTError(path_ + ": the engine has no " +
                          (mode == nvinfer1::TensorIOMode::kINPUT ? "input " : "output ") + name +
                          ": it was not built from this package's ONNX graphs");
    }
    const DataType type = engine_->getTensorDataType(name.c_str());
    if (std::find(types.begin(), types.end(), type) == types.end()) {
      throw TensorRTError(path_ + ": tensor " + name + " is " + type_name(type) + ", expected " +
                          type_name(*types.begin()));
    }
    return type;
  }
  Dims shape(const std::string& name) const { return engine_->getTensorShape(name.c_str()); }
  Dims max_shape(const std::string& name) const {
    return engine_->getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
  }
  DataType type(const std::string& name) const { return engine_->getTensorDataType(name.c_str()); }

  // Copies a host input to the device and binds its shape and address.
  void set_input(const std::string& name, const void* data, const Dims& shape, cudaStream_t stream) {
    const std::size_t bytes = static_cast<std::size_t>(volume(shape)) * element_size(type(name));
    void* device = buffers_[name].reserve(bytes, name);
    check_cuda(cudaMemcpyAsync(device, data, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync of " + name);
    if (!context_->setInputShape(name.c_str(), shape)) {
      throw TensorRTError(path_ + ": setInputShape(" + name + ", " + dims_text(shape) +
                          ") refused (outside the engine's optimisation profile?)");
    }
    if (!context_->setTensorAddress(name.c_str(), device)) {
      throw TensorRTError(path_ + ": setTensorAddress(" + name + ") refused");
    }
  }

  // Binds every output, enqueues, copies the outputs back and waits: {name: (bytes, shape)}.
  std::map<std::string, std::pair<std::vector<unsigned char>, Dims>> run(cudaStream_t stream) {
    std::map<std::string, std::pair<std::vector<unsigned char>, Dims>> results;
    std::map<std::string, void*> devices;
    for (const auto& name : outputs_) {
      const Dims dims = context_->getTensorShape(name.c_str());
      if (volume(dims) < 0) throw TensorRTError(path_ + ": output " + name + " has no shape yet: an input is unset");
      const std::size_t bytes = static_cast<std::size_t>(volume(dims)) * element_size(type(name));
      devices[name] = buffers_[name].reserve(bytes, name);
      if (!context_->setTensorAddress(name.c_str(), devices[name])) {
        throw TensorRTError(path_ + ": setTensorAddress(" + name + ") refused");
      }
      results[name] = {std::vector<unsigned char>(bytes), dims};
    }
    if (!context_->enqueueV3(stream)) throw TensorRTError(path_ + ": enqueueV3 failed (see the TensorRT log above)");
    for (auto& [name, result] : results) {
      check_cuda(cudaMemcpyAsync(result.first.data(), devices[name], result.first.size(), cudaMemcpyDeviceToHost,
                                 stream),
                 "cudaMemcpyAsync of " + name);
    }
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize after " + path_);
    return results;
  }

 private:
  std::string path_;
  // Declared in creation order: destroyed context first, runtime last.
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::vector<std::string> inputs_, outputs_;
  std::map<std::string, DeviceBuffer> buffers_;
};

template <typename T>
std::vector<T> as_vector(const std::vector<unsigned char>& bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

// Integer tensors in whichever width the engine uses (int64 from the ONNX; int32 if rebuilt so).
std::vector<std::int64_t> integers(const std::vector<unsigned char>& bytes, DataType type) {
  if (type == DataType::kINT64) return as_vector<std::int64_t>(bytes);
  const auto narrow = as_vector<std::int32_t>(bytes);
  return {narrow.begin(), narrow.end()};
}

std::vector<unsigned char> integer_bytes(const std::vector<std::int64_t>& values, DataType type) {
  if (type == DataType::kINT64) {
    std::vector<unsigned char> out(values.size() * 8);
    std::memcpy(out.data(), values.data(), out.size());
    return out;
  }
  std::vector<std::int32_t> narrow(values.begin(), values.end());
  std::vector<unsigned char> out(narrow.size() * 4);
  std::memcpy(out.data(), narrow.data(), out.size());
  return out;
}

}  // namespace

std::string tensorrt_version() {
  return std::to_string(getInferLibMajorVersion()) + "." + std::to_string(getInferLibMinorVersion()) + "." +
         std::to_string(getInferLibPatchVersion());
}

std::pair<std::string, std::string> cuda_device(int device) {
  int count = 0;
  check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount (is there a CUDA GPU and driver?)");
  if (device < 0 || device >= count) {
    throw TensorRTError("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
                        " device(s))");
  }
  cudaDeviceProp properties{};
  check_cuda(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
  return {properties.name, "sm" + std::to_string(properties.major) + std::to_string(properties.minor)};
}

struct TensorRTBackend::Impl {
  Logger logger;
  std::unique_ptr<Engine> encoder, pair;
  cudaStream_t stream = nullptr;
  DataType encoder_transitions = DataType::kINT64, pair_transitions = DataType::kINT64;
  std::int64_t max_k = 1;

  ~Impl() {
    encoder.reset();
    pair.reset();
    if (stream) cudaStreamDestroy(stream);
  }
};

TensorRTBackend::TensorRTBackend(const std::string& encoder_engine, const std::string& pair_engine, int device)
    : impl_(std::make_unique<Impl>()) {
  const auto [gpu, sm] = cuda_device(device);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  check_cuda(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  impl_->encoder = std::make_unique<Engine>(encoder_engine, impl_->logger);
  impl_->pair = std::make_unique<Engine>(pair_engine, impl_->logger);

  using nvinfer1::TensorIOMode;
  Engine& encoder = *impl_->encoder;
  encoder.require("frames", TensorIOMode::kINPUT, {DataType::kUINT8});
  const Dims frames = encoder.shape("frames");
  if (frames.nbDims != 5 || frames.d[1] != kNumFrames || frames.d[2] != kFrameSize || frames.d[3] != kFrameSize ||
      frames.d[4] != 3) {
    throw TensorRTError(encoder_engine + ": input frames has shape " + dims_text(frames) +
                        ", the demo feeds [1, 96, 112, 112, 3]");
  }
  for (const char* name : {"window_features", "transition_probs", "static_tokens"}) {
    encoder.require(name, TensorIOMode::kOUTPUT, {DataType::kFLOAT});
  }
  impl_->encoder_transitions = encoder.require("transitions", TensorIOMode::kOUTPUT, {DataType::kINT64, DataType::kINT32});

  Engine& pair = *impl_->pair;
  for (const char* name : {"query_window_features", "query_static_tokens", "exemplar_window_features",
                           "exemplar_static_tokens"}) {
    pair.require(name, TensorIOMode::kINPUT, {DataType::kFLOAT});
  }
  impl_->pair_transitions = pair.require("query_transitions", TensorIOMode::kINPUT, {DataType::kINT64, DataType::kINT32});
  pair.require("exemplar_transitions", TensorIOMode::kINPUT, {DataType::kINT64, DataType::kINT32});
  pair.require("delta", TensorIOMode::kOUTPUT, {DataType::kFLOAT});
  pair.require("step_deltas", TensorIOMode::kOUTPUT, {DataType::kFLOAT});
  const Dims exemplar = pair.shape("exemplar_window_features");
  impl_->max_k = exemplar.d[0] >= 0 ? exemplar.d[0] : pair.max_shape("exemplar_window_features").d[0];
  if (impl_->max_k < 1) throw TensorRTError(pair_engine + ": cannot tell how many exemplars the pair head takes");
  description_ = "tensorrt " + tensorrt_version() + " (C++ fineparser_demo, " + gpu + " " + sm + ")";
}

TensorRTBackend::~TensorRTBackend() = default;

void TensorRTBackend::check_bank(const ExemplarBank& bank) const {
  const Dims features = impl_->pair->shape("exemplar_window_features");
  const Dims tokens = impl_->pair->shape("exemplar_static_tokens");
  if (features.d[1] != bank.windows || features.d[2] != bank.feature_dim || tokens.d[1] != bank.token_rows ||
      tokens.d[2] != bank.token_dim) {
    throw TensorRTError(impl_->pair->path() + ": exemplar inputs " + dims_text(features) + " / " + dims_text(tokens) +
                        " do not fit the bank's [K, " + std::to_string(bank.windows) + ", " +
                        std::to_string(bank.feature_dim) + "] / [K, " + std::to_string(bank.token_rows) + ", " +
                        std::to_string(bank.token_dim) + "]: engines and bank come from different exports");
  }
}

QueryFeatures TensorRTBackend::encode(const std::vector<std::uint8_t>& frames) {
  if (frames.size() != static_cast<std::size_t>(kNumFrames) * kFrameBytes) {
    throw TensorRTError("encode needs 96 frames of 112x112x3 bytes, got " + std::to_string(frames.size()) + " bytes");
  }
  Engine& encoder = *impl_->encoder;
  encoder.set_input("frames", frames.data(), make_dims({1, kNumFrames, kFrameSize, kFrameSize, 3}), impl_->stream);
  auto out = encoder.run(impl_->stream);
  QueryFeatures query;
  query.window_features = as_vector<float>(out.at("window_features").first);
  query.transitions = integers(out.at("transitions").first, impl_->encoder_transitions);
  query.transition_probs = as_vector<float>(out.at("transition_probs").first);
  query.static_tokens = as_vector<float>(out.at("static_tokens").first);
  return query;
}

PairOutputs TensorRTBackend::pair_head(const QueryFeatures& query, const ExemplarBank& bank,
                                       const std::vector<std::int64_t>& indices) {
  Engine& pair = *impl_->pair;
  const std::int64_t windows = bank.windows, dim = bank.feature_dim, rows = bank.token_rows, tokens = bank.token_dim;
  PairOutputs outputs;
  // The engine's profile bounds K (1..32 as exported); more exemplars run in several calls.
  for (std::size_t begin = 0; begin < indices.size(); begin += static_cast<std::size_t>(impl_->max_k)) {
    const std::size_t end = std::min(indices.size(), begin + static_cast<std::size_t>(impl_->max_k));
    const auto k = static_cast<std::int64_t>(end - begin);
    std::vector<float> features, static_tokens;
    std::vector<std::int64_t> transitions;
    for (std::size_t i = begin; i < end; ++i) {
      const auto row = static_cast<std::size_t>(indices[i]);
      const auto f = bank.window_features.begin() + static_cast<std::ptrdiff_t>(row * windows * dim);
      features.insert(features.end(), f, f + windows * dim);
      const auto t = bank.static_tokens.begin() + static_cast<std::ptrdiff_t>(row * rows * tokens);
      static_tokens.insert(static_tokens.end(), t, t + rows * tokens);
      transitions.insert(transitions.end(), {bank.transitions[2 * row], bank.transitions[2 * row + 1]});
    }
    const auto query_transitions = integer_bytes(query.transitions, impl_->pair_transitions);
    const auto exemplar_transitions = integer_bytes(transitions, impl_->pair_transitions);
    cudaStream_t stream = impl_->stream;
    pair.set_input("query_window_features", query.window_features.data(), make_dims({1, windows, dim}), stream);
    pair.set_input("query_transitions", query_transitions.data(), make_dims({1, 2}), stream);
    pair.set_input("query_static_tokens", query.static_tokens.data(), make_dims({1, rows, tokens}), stream);
    pair.set_input("exemplar_window_features", features.data(), make_dims({k, windows, dim}), stream);
    pair.set_input("exemplar_transitions", exemplar_transitions.data(), make_dims({k, 2}), stream);
    pair.set_input("exemplar_static_tokens", static_tokens.data(), make_dims({k, rows, tokens}), stream);
    auto out = pair.run(stream);
    const auto delta = as_vector<float>(out.at("delta").first);
    const auto steps = as_vector<float>(out.at("step_deltas").first);
    outputs.delta.insert(outputs.delta.end(), delta.begin(), delta.end());
    outputs.step_deltas.insert(outputs.step_deltas.end(), steps.begin(), steps.end());
  }
  return outputs;
}

}  // namespace fineparser
