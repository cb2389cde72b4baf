#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dtype.h"
#include "nlohmann/json.hpp"

namespace attn::core {
namespace {

// Headers larger than this are refused before parsing (the format's own
// reference reader uses the same bound).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

struct DTypeEntry {
  StDType dtype;
  absl::string_view name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {StDType::kF64, "F64", 8},   {StDType::kF32, "F32", 4}, {StDType::kF16, "F16", 2},
    {StDType::kBF16, "BF16", 2}, {StDType::kI64, "I64", 8}, {StDType::kI32, "I32", 4},
    {StDType::kI16, "I16", 2},   {StDType::kI8, "I8", 1},   {StDType::kU8, "U8", 1},
    {StDType::kBool, "BOOL", 1},
};

const DTypeEntry* FindDType(absl::string_view name) {
  for (const auto& e : kDTypes) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

template <typename T>
T LoadLE(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // x86-64 and aarch64 Linux are little-endian
  return v;
}

}  // namespace

absl::string_view StDTypeName(StDType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

size_t StDTypeSize(StDType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

int64_t TensorView::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) munmap(mapping_, size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::FailedPreconditionError(msg);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrCat(path, ": cannot stat"));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->label_ = path;
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ > 0) {
    void* m = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      ::close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": mmap failed: ", std::strerror(errno)));
    }
    file->mapping_ = m;
    file->base_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  if (absl::Status s = file->Parse(); !s.ok()) return s;
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(std::string bytes,
                                                                            std::string label) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->label_ = std::move(label);
  file->owned_ = std::move(bytes);
  file->base_ = reinterpret_cast<const uint8_t*>(file->owned_.data());
  file->size_ = file->owned_.size();
  if (absl::Status s = file->Parse(); !s.ok()) return s;
  return file;
}

absl::Status SafetensorsFile::Parse() {
  auto bad = [this](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(label_, ": ", parts...));
  };
  if (size_ < 8) {
    return bad("truncated: ", size_, " bytes, expected at least 8 (header length)");
  }
  const uint64_t header_len = LoadLE<uint64_t>(base_);
  if (header_len > kMaxHeaderBytes) {
    return bad("header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes);
  }
  if (header_len > size_ - 8) {
    return bad("truncated: header length ", header_len, " but only ", size_ - 8,
               " bytes follow the length field");
  }
  const char* header_begin = reinterpret_cast<const char*>(base_ + 8);
  // nlohmann-json stops at a NUL byte and would ignore what follows it.
  if (std::memchr(header_begin, '\0', header_len) != nullptr) {
    return bad("header is not valid JSON (contains a NUL byte)");
  }
  nlohmann::json header = nlohmann::json::parse(header_begin, header_begin + header_len,
                                                /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return bad("header is not valid JSON");
  if (!header.is_object()) return bad("header must be a JSON object");

  const uint8_t* data = base_ + 8 + header_len;
  const size_t data_size = size_ - 8 - header_len;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return bad("__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) return bad("__metadata__.", m.key(), ": expected a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) return bad("tensor '", name, "': expected an object");
    auto dtype_it = v.find("dtype");
    auto shape_it = v.find("shape");
    auto offsets_it = v.find("data_offsets");
    if (dtype_it == v.end() || !dtype_it->is_string()) {
      return bad("tensor '", name, "': missing string field 'dtype'");
    }
    const DTypeEntry* dt = FindDType(dtype_it->get<std::string>());
    if (dt == nullptr) {
      return bad("tensor '", name, "': unknown dtype '", dtype_it->get<std::string>(),
                 "' (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    }
    if (shape_it == v.end() || !shape_it->is_array()) {
      return bad("tensor '", name, "': missing array field 'shape'");
    }
    TensorView t;
    t.name = name;
    t.dtype = dt->dtype;
    uint64_t count = 1;
    for (const auto& d : *shape_it) {
      if (!d.is_number_unsigned()) {
        return bad("tensor '", name, "': shape entries must be non-negative integers");
      }
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return bad("tensor '", name, "': shape entry ", dim, " does not fit in int64");
      }
      if (dim > 0 && count > std::numeric_limits<uint64_t>::max() / 8 / dim) {
        return bad("tensor '", name, "': shape overflows");
      }
      count *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    if (offsets_it == v.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
      return bad("tensor '", name,
                 "': 'data_offsets' must be [begin, end] with non-negative integers");
    }
    const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
    const uint64_t end = (*offsets_it)[1].get<uint64_t>();
    if (begin > end) return bad("tensor '", name, "': data_offsets begin ", begin, " > end ", end);
    if (end > data_size) {
      return bad("tensor '", name, "': data_offsets [", begin, ", ", end,
                 ") out of range: the data buffer has ", data_size, " bytes (file truncated?)");
    }
    if (end - begin != count * dt->size) {
      return bad("tensor '", name, "': shape ", ShapeString(t.shape), " of ", dt->name, " needs ",
                 count * dt->size, " bytes, data_offsets span ", end - begin);
    }
    if (begin % dt->size != 0) {
      return bad("tensor '", name, "': offset ", begin, " is not aligned to its element size ",
                 dt->size);
    }
    t.data = data + begin;
    t.nbytes = end - begin;
    tensors_.push_back(std::move(t));
  }
  // Overlap check over byte ranges sorted by start; empty tensors overlap nothing.
  std::vector<const TensorView*> sorted;
  for (const auto& t : tensors_) {
    if (t.nbytes > 0) sorted.push_back(&t);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->data < sorted[i - 1]->data + sorted[i - 1]->nbytes) {
      return bad("tensors '", sorted[i - 1]->name, "' and '", sorted[i]->name,
                 "' overlap in the data buffer");
    }
  }
  return absl::OkStatus();
}

const TensorView* SafetensorsFile::Find(absl::string_view name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadFloat(
    absl::string_view name, absl::Span<const int64_t> expected_shape) const {
  const TensorView* t = Find(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat(label_, ": no tensor '", name, "'"));
  if (!expected_shape.empty() && absl::Span<const int64_t>(t->shape) != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(label_, ": tensor '", name, "': expected shape ",
                                                   ShapeString(expected_shape), ", got ",
                                                   ShapeString(t->shape)));
  }
  const size_t n = static_cast<size_t>(t->num_elements());
  std::vector<float> out(n);
  switch (t->dtype) {
    case StDType::kF32:
      DecodeToFloat(DType::kF32, t->data, n, out.data());
      break;
    case StDType::kBF16:
      DecodeToFloat(DType::kBF16, t->data, n, out.data());
      break;
    case StDType::kF16:
      DecodeToFloat(DType::kF16, t->data, n, out.data());
      break;
    case StDType::kF64:
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(LoadLE<double>(t->data + 8 * i));
      break;
    default: {
      auto ints = ReadInt(name);
      if (!ints.ok()) return ints.status();
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>((*ints)[i]);
    }
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> SafetensorsFile::ReadInt(absl::string_view name) const {
  const TensorView* t = Find(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat(label_, ": no tensor '", name, "'"));
  switch (t->dtype) {
    case StDType::kI64:
    case StDType::kI32:
    case StDType::kI16:
    case StDType::kI8:
    case StDType::kU8:
    case StDType::kBool:
      break;
    default:
      // Checked before the loop: an empty float tensor is not an integer one either.
      return absl::InvalidArgumentError(absl::StrCat(label_, ": tensor '", name, "': dtype ",
                                                     StDTypeName(t->dtype),
                                                     " is not an integer type"));
  }
  const size_t n = static_cast<size_t>(t->num_elements());
  std::vector<int64_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = t->data + i * StDTypeSize(t->dtype);
    switch (t->dtype) {
      case StDType::kI64:
        out[i] = LoadLE<int64_t>(p);
        break;
      case StDType::kI32:
        out[i] = LoadLE<int32_t>(p);
        break;
      case StDType::kI16:
        out[i] = LoadLE<int16_t>(p);
        break;
      case StDType::kI8:
        out[i] = static_cast<int8_t>(*p);
        break;
      case StDType::kU8:
      case StDType::kBool:
        out[i] = *p;
        break;
      default:
        break;  // refused above
    }
  }
  return out;
}

TensorToWrite TensorToWrite::FromFloats(std::string name, std::vector<int64_t> shape,
                                        absl::Span<const float> values, StDType dtype) {
  TensorToWrite t{std::move(name), dtype, std::move(shape), {}};
  const DType d = dtype == StDType::kBF16  ? DType::kBF16
                  : dtype == StDType::kF16 ? DType::kF16
                                           : DType::kF32;
  t.dtype = d == DType::kF32 ? StDType::kF32 : dtype;
  t.bytes.resize(values.size() * DTypeSize(d));
  EncodeFromFloat(d, values, reinterpret_cast<uint8_t*>(t.bytes.data()));
  return t;
}

TensorToWrite TensorToWrite::FromInt32(std::string name, std::vector<int64_t> shape,
                                       absl::Span<const int32_t> values) {
  TensorToWrite t{std::move(name), StDType::kI32, std::move(shape), {}};
  t.bytes.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(int32_t));
  return t;
}

std::string SerializeSafetensors(const std::vector<TensorToWrite>& tensors,
                                 const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  // Each tensor starts at a multiple of its element size, as Parse() requires
  // (a 2-byte tensor of odd length is followed by padding).
  std::vector<size_t> begins;
  size_t offset = 0;
  for (const auto& t : tensors) {
    const size_t align = std::max<size_t>(StDTypeSize(t.dtype), 1);
    offset = (offset + align - 1) / align * align;
    begins.push_back(offset);
    header[t.name] = {{"dtype", std::string(StDTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string json = header.dump();
  // Pad with spaces so the data buffer starts 8-byte aligned.
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t len = json.size();
  std::memcpy(out.data(), &len, 8);
  out += json;
  const size_t data_start = out.size();
  for (size_t i = 0; i < tensors.size(); ++i) {
    out.resize(data_start + begins[i], '\0');
    out += tensors[i].bytes;
  }
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  const std::string bytes = SerializeSafetensors(tensors, metadata);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::FailedPreconditionError(absl::StrCat(path, ": cannot open for writing"));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace attn::core
