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

// Device memory of a fixed size, freed with its owner.
class DeviceBuffer {
 public:
  DeviceBuffer(std::size_t bytes, const std::string& tensor) {
    check_cuda(cudaMalloc(&data_, std::max<std::size_t>(bytes, 1)), "cudaMalloc for " + tensor);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data_) cudaFree(data_);
  }
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
};

// Page-locked host memory of a fixed size (cudaMallocHost): asynchronous copies need it, and
// copies from it run at full bus speed.
class PinnedBuffer {
 public:
  PinnedBuffer(std::size_t bytes, const std::string& tensor) {
    check_cuda(cudaMallocHost(&data_, std::max<std::size_t>(bytes, 1)), "cudaMallocHost for " + tensor);
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (data_) cudaFreeHost(data_);
  }
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
};

// One I/O tensor with its buffers, both sized for the optimisation profile's maximum shape.
struct Binding {
  Binding(const std::string& tensor, bool is_input, DataType data_type, const Dims& max, std::size_t bytes)
      : name(tensor), input(is_input), type(data_type), max_shape(max), max_bytes(bytes),
        device(bytes, tensor), host(bytes, tensor) {}
  std::string name;
  bool input;
  DataType type;
  Dims max_shape;
  std::size_t max_bytes;
  DeviceBuffer device;
  PinnedBuffer host;
};

// One deserialized engine with its execution context. As NVIDIA's samples do it: every tensor's
// device and pinned host buffers are allocated once, at the profile's maximum shapes, and bound
// by name once; each run copies inputs through the pinned buffers, enqueues, copies outputs back.
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
                          "`fineparser-calibrate PKG --engine` or `fineparser-export CKPT --out PKG --engine`");
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw TensorRTError(path + ": createExecutionContext failed (out of GPU memory?)");
    std::vector<std::string> names;
    for (std::int32_t i = 0; i < engine_->getNbIOTensors(); ++i) names.emplace_back(engine_->getIOTensorName(i));
    std::map<std::string, Dims> max_shapes;
    for (const auto& name : names) {
      if (engine_->getTensorIOMode(name.c_str()) != nvinfer1::TensorIOMode::kINPUT) continue;
      Dims shape = engine_->getTensorShape(name.c_str());
      if (volume(shape) < 0) shape = engine_->getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
      if (!context_->setInputShape(name.c_str(), shape)) {
        throw TensorRTError(path + ": setInputShape(" + name + ", " + dims_text(shape) + ") refused");
      }
      max_shapes[name] = shape;
    }
    for (const auto& name : names) {
      const bool input = max_shapes.count(name) > 0;
      const Dims shape = input ? max_shapes[name] : context_->getTensorShape(name.c_str());
      if (volume(shape) < 0) throw TensorRTError(path + ": output " + name + " has no maximum shape");
      const DataType type = engine_->getTensorDataType(name.c_str());
      const auto bytes = static_cast<std::size_t>(volume(shape)) * element_size(type);
      auto binding = std::make_unique<Binding>(name, input, type, shape, bytes);
      if (!context_->setTensorAddress(name.c_str(), binding->device.data())) {
        throw TensorRTError(path + ": setTensorAddress(" + name + ") refused");
      }
      (input ? inputs_ : outputs_).push_back(name);
      bindings_[name] = std::move(binding);
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
  Dims max_shape(const std::string& name) const { return binding(name).max_shape; }
  DataType type(const std::string& name) const { return engine_->getTensorDataType(name.c_str()); }

  // The pinned host buffer of an input, to fill with `bytes` (checked against the profile's maximum).
  void* input_buffer(const std::string& name, std::size_t bytes) {
    Binding& input = binding(name);
    if (bytes > input.max_bytes) {
      throw TensorRTError(path_ + ": input " + name + " needs " + std::to_string(bytes) + " bytes, more than its " +
                          "maximum shape " + dims_text(input.max_shape) + " holds (outside the optimisation profile)");
    }
    return input.host.data();
  }

  // Sets an input's shape and copies its pinned buffer (filled through input_buffer) to the device.
  void upload(const std::string& name, const Dims& shape, cudaStream_t stream) {
    Binding& input = binding(name);
    const std::size_t bytes = static_cast<std::size_t>(volume(shape)) * element_size(input.type);
    input_buffer(name, bytes);
    if (!context_->setInputShape(name.c_str(), shape)) {
      throw TensorRTError(path_ + ": setInputShape(" + name + ", " + dims_text(shape) +
                          ") refused (outside the engine's optimisation profile, max " +
                          dims_text(input.max_shape) + ")");
    }
    check_cuda(cudaMemcpyAsync(input.device.data(), input.host.data(), bytes, cudaMemcpyHostToDevice, stream),
               "cudaMemcpyAsync of " + name);
  }

  // Copies host data into an input's pinned buffer, then uploads it.
  void set_input(const std::string& name, const void* data, const Dims& shape, cudaStream_t stream) {
    const std::size_t bytes = static_cast<std::size_t>(volume(shape)) * element_size(type(name));
    std::memcpy(input_buffer(name, bytes), data, bytes);
    upload(name, shape, stream);
  }

  // Enqueues, copies the outputs back through their pinned buffers and waits: {name: (bytes, shape)}.
  std::map<std::string, std::pair<std::vector<unsigned char>, Dims>> run(cudaStream_t stream) {
    std::map<std::string, std::pair<Dims, std::size_t>> shapes;
    for (const auto& name : outputs_) {
      const Dims dims = context_->getTensorShape(name.c_str());
      if (volume(dims) < 0) throw TensorRTError(path_ + ": output " + name + " has no shape yet: an input is unset");
      shapes[name] = {dims, static_cast<std::size_t>(volume(dims)) * element_size(type(name))};
    }
    if (!context_->enqueueV3(stream)) throw TensorRTError(path_ + ": enqueueV3 failed (see the TensorRT log above)");
    for (const auto& [name, shape] : shapes) {
      Binding& output = binding(name);
      check_cuda(cudaMemcpyAsync(output.host.data(), output.device.data(), shape.second, cudaMemcpyDeviceToHost,
                                 stream),
                 "cudaMemcpyAsync of " + name);
    }
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize after " + path_);
    std::map<std::string, std::pair<std::vector<unsigned char>, Dims>> results;
    for (const auto& [name, shape] : shapes) {
      const auto* host = static_cast<const unsigned char*>(binding(name).host.data());
      results[name] = {std::vector<unsigned char>(host, host + shape.second), shape.first};
    }
    return results;
  }

 private:
  Binding& binding(const std::string& name) const {
    const auto found = bindings_.find(name);
    if (found == bindings_.end()) throw TensorRTError(path_ + ": the engine has no tensor " + name);
    return *found->second;
  }

  std::string path_;
  // Declared in creation order, destroyed in reverse: buffers, then context, engine, runtime.
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::vector<std::string> inputs_, outputs_;
  std::map<std::string, std::unique_ptr<Binding>> bindings_;
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

std::vector<unsigned char> integer_bytes_of(const std::vector<std::int64_t>& values, DataType type) {
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
  const std::size_t feature_floats = static_cast<std::size_t>(windows * dim);
  const std::size_t token_floats = static_cast<std::size_t>(rows * tokens);
  const DataType integer = impl_->pair_transitions;
  const std::size_t integer_bytes = integer == DataType::kINT64 ? 8 : 4;
  cudaStream_t stream = impl_->stream;
  const auto query_transitions = integer_bytes_of(query.transitions, integer);
  pair.set_input("query_window_features", query.window_features.data(), make_dims({1, windows, dim}), stream);
  pair.set_input("query_transitions", query_transitions.data(), make_dims({1, 2}), stream);
  pair.set_input("query_static_tokens", query.static_tokens.data(), make_dims({1, rows, tokens}), stream);
  PairOutputs outputs;
  // The engine's profile bounds K (1..32 as exported); more exemplars run in several calls.
  for (std::size_t begin = 0; begin < indices.size(); begin += static_cast<std::size_t>(impl_->max_k)) {
    const std::size_t end = std::min(indices.size(), begin + static_cast<std::size_t>(impl_->max_k));
    const auto k = static_cast<std::int64_t>(end - begin);
    // Exemplar rows are gathered straight into the pinned input buffers (no staging vector).
    auto* features = static_cast<float*>(
        pair.input_buffer("exemplar_window_features", static_cast<std::size_t>(k) * feature_floats * sizeof(float)));
    auto* static_tokens = static_cast<float*>(
        pair.input_buffer("exemplar_static_tokens", static_cast<std::size_t>(k) * token_floats * sizeof(float)));
    auto* transitions = static_cast<unsigned char*>(
        pair.input_buffer("exemplar_transitions", static_cast<std::size_t>(k) * 2 * integer_bytes));
    for (std::size_t i = begin; i < end; ++i) {
      const auto row = static_cast<std::size_t>(indices[i]);
      const std::size_t slot = i - begin;
      std::memcpy(features + slot * feature_floats, bank.window_features.data() + row * feature_floats,
                  feature_floats * sizeof(float));
      std::memcpy(static_tokens + slot * token_floats, bank.static_tokens.data() + row * token_floats,
                  token_floats * sizeof(float));
      const auto pair_bytes = integer_bytes_of({bank.transitions[2 * row], bank.transitions[2 * row + 1]}, integer);
      std::memcpy(transitions + slot * 2 * integer_bytes, pair_bytes.data(), pair_bytes.size());
    }
    pair.upload("exemplar_window_features", make_dims({k, windows, dim}), stream);
    pair.upload("exemplar_transitions", make_dims({k, 2}), stream);
    pair.upload("exemplar_static_tokens", make_dims({k, rows, tokens}), stream);
    auto out = pair.run(stream);
    const auto delta = as_vector<float>(out.at("delta").first);
    const auto steps = as_vector<float>(out.at("step_deltas").first);
    outputs.delta.insert(outputs.delta.end(), delta.begin(), delta.end());
    outputs.step_deltas.insert(outputs.step_deltas.end(), steps.begin(), steps.end());
  }
  return outputs;
}

}  // namespace fineparser
