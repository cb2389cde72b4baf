#include "server/reflection_service.h"

#include <algorithm>
#include <deque>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "server/status_util.h"

namespace attn::server {
namespace {

namespace pb = google::protobuf;

// Names may come fully qualified with a leading dot, as in descriptors.
absl::string_view WithoutDot(absl::string_view name) {
  absl::ConsumePrefix(&name, ".");
  return name;
}

absl::StatusOr<const pb::FileDescriptor*> FileByName(const pb::DescriptorPool& pool,
                                                     const std::string& name) {
  const pb::FileDescriptor* file = pool.FindFileByName(name);
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat("file_by_filename: unknown file '", name, "'"));
  }
  return file;
}

absl::StatusOr<const pb::FileDescriptor*> FileContainingSymbol(const pb::DescriptorPool& pool,
                                                               absl::string_view symbol) {
  const pb::FileDescriptor* file = pool.FindFileContainingSymbol(std::string(WithoutDot(symbol)));
  if (file == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("file_containing_symbol: unknown symbol '", symbol, "'"));
  }
  return file;
}

absl::StatusOr<const pb::Descriptor*> MessageType(const pb::DescriptorPool& pool,
                                                  absl::string_view field, absl::string_view type) {
  const pb::Descriptor* message = pool.FindMessageTypeByName(std::string(WithoutDot(type)));
  if (message == nullptr) {
    return absl::NotFoundError(absl::StrCat(field, ": unknown message type '", type, "'"));
  }
  return message;
}

absl::StatusOr<const pb::FileDescriptor*> FileContainingExtension(const pb::DescriptorPool& pool,
                                                                  absl::string_view type,
                                                                  int number) {
  constexpr absl::string_view kField = "file_containing_extension";
  const absl::StatusOr<const pb::Descriptor*> message = MessageType(pool, kField, type);
  if (!message.ok()) return message.status();
  const pb::FieldDescriptor* extension = pool.FindExtensionByNumber(*message, number);
  if (extension == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(kField, ": '", type, "' has no extension numbered ", number));
  }
  return extension->file();
}

// `file`, serialized, then each file it imports (transitively, breadth
// first) that is not in `sent`; adds them all to `sent`.
std::vector<std::string> SerializeWithImports(const pb::FileDescriptor* file,
                                              std::set<std::string>& sent) {
  std::vector<std::string> out;
  std::deque<const pb::FileDescriptor*> next = {file};
  sent.insert(file->name());
  while (!next.empty()) {
    const pb::FileDescriptor* f = next.front();
    next.pop_front();
    pb::FileDescriptorProto proto;
    f->CopyTo(&proto);
    out.push_back(proto.SerializeAsString());
    for (int i = 0; i < f->dependency_count(); ++i) {
      const pb::FileDescriptor* dependency = f->dependency(i);
      if (sent.insert(dependency->name()).second) next.push_back(dependency);
    }
  }
  return out;
}

template <typename Response>
void SetError(const absl::Status& status, Response& response) {
  response.mutable_error_response()->set_error_code(static_cast<int>(status.code()));
  response.mutable_error_response()->set_error_message(std::string(status.message()));
}

// Answers one request. `sent`: the files this stream has been sent.
template <typename Proto>
void Answer(const ReflectionService::Options& options, const typename Proto::Request& request,
            std::set<std::string>& sent, typename Proto::Response& response) {
  using Request = typename Proto::Request;
  const pb::DescriptorPool& pool = *options.pool;
  response.Clear();
  response.set_valid_host(request.host());
  *response.mutable_original_request() = request;
  absl::StatusOr<const pb::FileDescriptor*> file;
  switch (request.message_request_case()) {
    case Request::kFileByFilename:
      file = FileByName(pool, request.file_by_filename());
      break;
    case Request::kFileContainingSymbol:
      file = FileContainingSymbol(pool, request.file_containing_symbol());
      break;
    case Request::kFileContainingExtension:
      file = FileContainingExtension(pool, request.file_containing_extension().containing_type(),
                                     request.file_containing_extension().extension_number());
      break;
    case Request::kAllExtensionNumbersOfType: {
      const absl::StatusOr<const pb::Descriptor*> message = MessageType(
          pool, "all_extension_numbers_of_type", request.all_extension_numbers_of_type());
      if (!message.ok()) return SetError(message.status(), response);
      std::vector<const pb::FieldDescriptor*> extensions;
      pool.FindAllExtensions(*message, &extensions);
      std::vector<int> numbers;
      for (const pb::FieldDescriptor* extension : extensions)
        numbers.push_back(extension->number());
      std::sort(numbers.begin(), numbers.end());
      auto* out = response.mutable_all_extension_numbers_response();
      out->set_base_type_name((*message)->full_name());
      for (int number : numbers) out->add_extension_number(number);
      return;
    }
    case Request::kListServices: {
      auto* out = response.mutable_list_services_response();
      for (const std::string& name : options.services) out->add_service()->set_name(name);
      return;
    }
    default:
      return SetError(
          absl::InvalidArgumentError("message_request: expected one of file_by_filename, "
                                     "file_containing_symbol, file_containing_extension, "
                                     "all_extension_numbers_of_type or list_services, got none"),
          response);
  }
  if (!file.ok()) return SetError(file.status(), response);
  auto* out = response.mutable_file_descriptor_response();
  for (std::string& bytes : SerializeWithImports(*file, sent)) {
    out->add_file_descriptor_proto(std::move(bytes));
  }
}

// One ServerReflectionInfo stream. It has at most one operation in flight
// (the read, or the response's write) and starts the next one from the
// reaction to the last, so its reactions never overlap and its members need
// no lock. OnCancel needs no override: a cancelled stream's operation in
// flight completes with ok = false, and that reaction finishes it.
template <typename Proto>
class Reactor final
    : public grpc::ServerBidiReactor<typename Proto::Request, typename Proto::Response> {
 public:
  Reactor(const ReflectionService::Options& options, const grpc::CallbackServerContext& context)
      : options_(options) {
    if (options.authorize != nullptr) {
      const absl::Status allowed = options.authorize(
          absl::StrCat("/", Proto::Service::service_full_name(), "/ServerReflectionInfo"), context);
      if (!allowed.ok()) {
        this->Finish(ToGrpcStatus(allowed));
        return;
      }
    }
    this->StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    // Not ok: the client closed its side (or the stream broke, and then no
    // one sees the status).
    if (!ok) return this->Finish(grpc::Status::OK);
    Answer<Proto>(options_, request_, sent_, response_);
    this->StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) return this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke"));
    this->StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  const ReflectionService::Options& options_;  // the service's, which outlives every stream
  typename Proto::Request request_;
  typename Proto::Response response_;
  std::set<std::string> sent_;  // names of the files sent on this stream
};

}  // namespace

template <typename Proto>
class ReflectionService::Versioned final : public Proto::Service::CallbackService {
 public:
  explicit Versioned(const Options* options) : options_(options) {}

  grpc::ServerBidiReactor<typename Proto::Request, typename Proto::Response>* ServerReflectionInfo(
      grpc::CallbackServerContext* context) override {
    return new Reactor<Proto>(*options_, *context);
  }

 private:
  const Options* const options_;
};

const std::vector<std::string>& ReflectionService::ServiceNames() {
  static const auto* const kNames = new std::vector<std::string>{
      ReflectionV1::Service::service_full_name(), ReflectionV1Alpha::Service::service_full_name()};
  return *kNames;
}

absl::StatusOr<std::unique_ptr<ReflectionService>> ReflectionService::Create(Options options) {
  if (options.pool == nullptr) {
    return absl::InvalidArgumentError("pool: required (the default is the generated pool)");
  }
  for (const std::string& name : options.services) {
    if (options.pool->FindServiceByName(name) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("services: '", name, "' is not a service in the descriptor pool"));
    }
  }
  return std::unique_ptr<ReflectionService>(new ReflectionService(std::move(options)));
}

ReflectionService::ReflectionService(Options options)
    : options_(std::move(options)),
      v1_(std::make_unique<Versioned<ReflectionV1>>(&options_)),
      v1alpha_(std::make_unique<Versioned<ReflectionV1Alpha>>(&options_)) {}

ReflectionService::~ReflectionService() = default;

void ReflectionService::RegisterWith(grpc::ServerBuilder& builder) {
  builder.RegisterService(v1_.get());
  builder.RegisterService(v1alpha_.get());
}

}  // namespace attn::server
