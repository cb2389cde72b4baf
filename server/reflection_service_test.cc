// ReflectionService end to end, on both protocol packages (v1 and v1alpha):
// an AttentionServer on a free loopback port answering the generated stub,
// and a small grpc::Server of its own for the authorize hook.
#include "server/reflection_service.h"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/mutex.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/text_format.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "gtest/gtest.h"
#include "server/attention_server.h"

namespace attn::server {
namespace {

namespace pb = google::protobuf;

// No model: reflection does not depend on them.
std::unique_ptr<AttentionServer> StartServer() {
  AttentionServer::Options options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  auto server = AttentionServer::Start(ModelRepository::FromModels({}), options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// One reflection stream on 127.0.0.1:port.
template <typename Proto>
class Stream {
 public:
  using Request = typename Proto::Request;
  using Response = typename Proto::Response;

  explicit Stream(int port)
      : stub_(Proto::Service::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                                          grpc::InsecureChannelCredentials()))),
        stream_(stub_->ServerReflectionInfo(&context_)) {}

  // The response to `request`; fails the test if there is none.
  Response Ask(const Request& request) {
    Response response;
    EXPECT_TRUE(stream_->Write(request));
    EXPECT_TRUE(stream_->Read(&response));
    return response;
  }
  Response Symbol(const std::string& symbol) {
    Request request;
    request.set_file_containing_symbol(symbol);
    return Ask(request);
  }
  Response File(const std::string& name) {
    Request request;
    request.set_file_by_filename(name);
    return Ask(request);
  }

  // Closes the client's side; the stream's final status.
  grpc::Status Close() {
    stream_->WritesDone();
    return stream_->Finish();
  }
  // The status of a stream the server ended without reading.
  grpc::Status Refused() {
    Response response;
    EXPECT_FALSE(stream_->Read(&response));
    return stream_->Finish();
  }

 private:
  std::unique_ptr<typename Proto::Service::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<Request, Response>> stream_;
};

// The file names in a file_descriptor_response, in order; each must parse.
template <typename Response>
std::vector<std::string> FileNames(const Response& response) {
  std::vector<std::string> names;
  EXPECT_TRUE(response.has_file_descriptor_response()) << response.DebugString();
  for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
    pb::FileDescriptorProto file;
    EXPECT_TRUE(file.ParseFromString(bytes));
    names.push_back(file.name());
  }
  return names;
}

// A fresh pool (not the generated one) built from the response's files alone:
// every import must be among them. Each BuildFile must succeed.
template <typename Response>
std::unique_ptr<pb::DescriptorPool> BuildPool(const Response& response) {
  std::map<std::string, pb::FileDescriptorProto> files;
  for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
    pb::FileDescriptorProto file;
    EXPECT_TRUE(file.ParseFromString(bytes));
    files[file.name()] = file;
  }
  auto pool = std::make_unique<pb::DescriptorPool>();
  std::function<void(const std::string&)> build = [&](const std::string& name) {
    if (pool->FindFileByName(name) != nullptr) return;
    const auto it = files.find(name);
    ASSERT_NE(it, files.end()) << "import not sent: " << name;
    for (const std::string& dependency : it->second.dependency()) build(dependency);
    EXPECT_NE(pool->BuildFile(it->second), nullptr) << name;
  };
  for (const auto& [name, file] : files) build(name);
  return pool;
}

template <typename Proto>
class ReflectionServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartServer();
    ASSERT_NE(server_, nullptr);
  }
  int port() const { return server_->grpc_port(); }

  std::unique_ptr<AttentionServer> server_;
};

using Versions = ::testing::Types<ReflectionV1, ReflectionV1Alpha>;
TYPED_TEST_SUITE(ReflectionServiceTest, Versions);

TYPED_TEST(ReflectionServiceTest, ListServicesNamesExactlyTheRegisteredServices) {
  Stream<TypeParam> stream(this->port());
  typename TypeParam::Request request;
  request.set_host("localhost");
  request.set_list_services("*");
  const auto response = stream.Ask(request);
  ASSERT_TRUE(response.has_list_services_response()) << response.DebugString();
  std::vector<std::string> names;
  for (const auto& service : response.list_services_response().service())
    names.push_back(service.name());
  EXPECT_EQ(names, (std::vector<std::string>{
                       "attention.v1.AttentionService", "inference.GRPCInferenceService",
                       "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                       "grpc.reflection.v1alpha.ServerReflection"}));
  EXPECT_EQ(response.valid_host(), "localhost");
  EXPECT_EQ(response.original_request().list_services(), "*");
  EXPECT_TRUE(stream.Close().ok());
}

TYPED_TEST(ReflectionServiceTest, ServiceSymbolGivesAttentionProtoFromWhichAPoolBuilds) {
  Stream<TypeParam> stream(this->port());
  const auto response = stream.Symbol("attention.v1.AttentionService");
  const std::vector<std::string> names = FileNames(response);
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names.front(), "attention/v1/attention.proto");
  std::unique_ptr<pb::DescriptorPool> pool = BuildPool(response);
  const pb::ServiceDescriptor* service = pool->FindServiceByName("attention.v1.AttentionService");
  ASSERT_NE(service, nullptr);
  const pb::MethodDescriptor* attend = service->FindMethodByName("Attend");
  ASSERT_NE(attend, nullptr);
  EXPECT_EQ(attend->input_type()->full_name(), "attention.v1.AttendRequest");
  EXPECT_TRUE(stream.Close().ok());
}

TYPED_TEST(ReflectionServiceTest, AFileComesWithItsImportsAndEachImportOncePerStream) {
  Stream<TypeParam> stream(this->port());
  // model_config.proto imports attention.proto.
  auto response = stream.File("attention/v1/model_config.proto");
  EXPECT_EQ(FileNames(response), (std::vector<std::string>{"attention/v1/model_config.proto",
                                                           "attention/v1/attention.proto"}));
  std::unique_ptr<pb::DescriptorPool> pool = BuildPool(response);
  EXPECT_NE(pool->FindFileByName("attention/v1/model_config.proto"), nullptr);
  // The file asked for always comes; an import already sent does not.
  EXPECT_EQ(FileNames(stream.File("attention/v1/model_config.proto")),
            std::vector<std::string>{"attention/v1/model_config.proto"});
  EXPECT_EQ(FileNames(stream.Symbol("attention.v1.AttentionService")),
            std::vector<std::string>{"attention/v1/attention.proto"});
  EXPECT_TRUE(stream.Close().ok());
  // A new stream starts afresh.
  Stream<TypeParam> again(this->port());
  EXPECT_EQ(FileNames(again.File("attention/v1/model_config.proto")).size(), 2u);
  EXPECT_TRUE(again.Close().ok());
}

TYPED_TEST(ReflectionServiceTest, EveryKindOfSymbolFindsItsFile) {
  Stream<TypeParam> stream(this->port());
  for (const std::string symbol :
       {"attention.v1.AttendRequest", "attention.v1.AttentionService.Attend",
        "attention.v1.AttendRequest.model_name", "attention.v1.DataType", "attention.v1.FLOAT32",
        ".attention.v1.Tensor"}) {
    const std::vector<std::string> names = FileNames(stream.Symbol(symbol));
    ASSERT_FALSE(names.empty()) << symbol;
    EXPECT_EQ(names.front(), "attention/v1/attention.proto") << symbol;
  }
  EXPECT_EQ(FileNames(stream.Symbol("grpc.health.v1.Health.Check")).front(),
            "grpc/health/v1/health.proto");
  EXPECT_EQ(FileNames(stream.Symbol(TypeParam::Service::service_full_name())).front(),
            TypeParam::Request::descriptor()->file()->name());
  EXPECT_TRUE(stream.Close().ok());
}

TYPED_TEST(ReflectionServiceTest, KnownFileByName) {
  Stream<TypeParam> stream(this->port());
  const auto response = stream.File("grpc/health/v1/health.proto");
  EXPECT_EQ(FileNames(response), std::vector<std::string>{"grpc/health/v1/health.proto"});
  EXPECT_NE(BuildPool(response)->FindServiceByName("grpc.health.v1.Health"), nullptr);
  EXPECT_TRUE(stream.Close().ok());
}

TYPED_TEST(ReflectionServiceTest, UnknownNamesAreNotFoundAndKeepTheStreamOpen) {
  Stream<TypeParam> stream(this->port());
  auto response = stream.Symbol("attention.v1.NoSuchThing");
  ASSERT_TRUE(response.has_error_response()) << response.DebugString();
  EXPECT_EQ(response.error_response().error_code(), 5);
  EXPECT_TRUE(
      absl::StrContains(response.error_response().error_message(), "'attention.v1.NoSuchThing'"))
      << response.error_response().error_message();

  response = stream.File("no/such/file.proto");
  ASSERT_TRUE(response.has_error_response()) << response.DebugString();
  EXPECT_EQ(response.error_response().error_code(), 5);
  EXPECT_TRUE(absl::StrContains(response.error_response().error_message(), "'no/such/file.proto'"));

  typename TypeParam::Request request;
  request.mutable_file_containing_extension()->set_containing_type("attention.v1.AttendRequest");
  request.mutable_file_containing_extension()->set_extension_number(1000);
  response = stream.Ask(request);
  ASSERT_TRUE(response.has_error_response()) << response.DebugString();
  EXPECT_EQ(response.error_response().error_code(), 5);
  EXPECT_TRUE(absl::StrContains(response.error_response().error_message(), "1000"));

  request.mutable_file_containing_extension()->set_containing_type("attention.v1.Nope");
  response = stream.Ask(request);
  EXPECT_EQ(response.error_response().error_code(), 5);
  EXPECT_TRUE(absl::StrContains(response.error_response().error_message(), "'attention.v1.Nope'"));

  request.set_all_extension_numbers_of_type("attention.v1.Nope");
  response = stream.Ask(request);
  EXPECT_EQ(response.error_response().error_code(), 5);
  EXPECT_TRUE(stream.Close().ok());
}

TYPED_TEST(ReflectionServiceTest, ExtensionNumbersOfAKnownTypeWithoutExtensions) {
  Stream<TypeParam> stream(this->port());
  typename TypeParam::Request request;
  request.set_all_extension_numbers_of_type("attention.v1.AttendRequest");
  const auto response = stream.Ask(request);
  ASSERT_TRUE(response.has_all_extension_numbers_response()) << response.DebugString();
  EXPECT_EQ(response.all_extension_numbers_response().base_type_name(),
            "attention.v1.AttendRequest");
  EXPECT_EQ(response.all_extension_numbers_response().extension_number_size(), 0);
  EXPECT_TRUE(stream.Close().ok());
}

TYPED_TEST(ReflectionServiceTest, EmptyRequestIsInvalidArgument) {
  Stream<TypeParam> stream(this->port());
  const auto response = stream.Ask(typename TypeParam::Request());
  ASSERT_TRUE(response.has_error_response()) << response.DebugString();
  EXPECT_EQ(response.error_response().error_code(), 3);
  EXPECT_TRUE(absl::StrContains(response.error_response().error_message(), "message_request"));
  EXPECT_TRUE(stream.Close().ok());
}

TYPED_TEST(ReflectionServiceTest, ManyRequestsOnOneStreamAreAnsweredInOrder) {
  Stream<TypeParam> stream(this->port());
  for (int round = 0; round < 20; ++round) {
    typename TypeParam::Request list;
    list.set_list_services("");
    auto response = stream.Ask(list);
    EXPECT_EQ(response.list_services_response().service_size(), 5);
    response = stream.Symbol("attention.v1.AttendResponse");
    EXPECT_EQ(response.original_request().file_containing_symbol(), "attention.v1.AttendResponse");
    EXPECT_EQ(FileNames(response).front(), "attention/v1/attention.proto");
    response = stream.Ask(typename TypeParam::Request());
    EXPECT_EQ(response.error_response().error_code(), 3);
  }
  EXPECT_TRUE(stream.Close().ok());
}

ReflectionService::Options Options(std::vector<std::string> services,
                                   ReflectionService::Authorize authorize = nullptr) {
  ReflectionService::Options options;
  options.services = std::move(services);
  options.authorize = std::move(authorize);
  return options;
}

// A ReflectionService on a grpc::Server of its own.
class OwnServer {
 public:
  // Serves reflection's own names from the generated pool.
  explicit OwnServer(ReflectionService::Authorize authorize)
      : OwnServer(Options(ReflectionService::ServiceNames(), std::move(authorize))) {}
  explicit OwnServer(ReflectionService::Options options) {
    auto service = ReflectionService::Create(std::move(options));
    EXPECT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    service_->RegisterWith(builder);
    server_ = builder.BuildAndStart();
    EXPECT_NE(server_, nullptr);
  }
  ~OwnServer() {
    if (server_ != nullptr) server_->Shutdown();
  }
  int port() const { return port_; }

 private:
  std::unique_ptr<ReflectionService> service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

template <typename Proto>
class ReflectionOwnServerTest : public ::testing::Test {};
TYPED_TEST_SUITE(ReflectionOwnServerTest, Versions);

TYPED_TEST(ReflectionOwnServerTest, RefusedStreamEndsWithTheAuthorizersStatus) {
  Mutex mu;
  std::vector<std::string> methods;
  OwnServer own([&mu, &methods](absl::string_view method, const grpc::ServerContextBase&) {
    MutexLock lock(&mu);
    methods.emplace_back(method);
    return absl::PermissionDeniedError("reflection: needs the read role");
  });
  Stream<TypeParam> stream(own.port());
  const grpc::Status status = stream.Refused();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(status.error_message(), "reflection: needs the read role");
  MutexLock lock(&mu);
  EXPECT_EQ(methods, std::vector<std::string>{absl::StrCat(
                         "/", TypeParam::Service::service_full_name(), "/ServerReflectionInfo")});
}

TYPED_TEST(ReflectionOwnServerTest, AllowedStreamIsServed) {
  OwnServer own([](absl::string_view, const grpc::ServerContextBase&) { return absl::OkStatus(); });
  Stream<TypeParam> stream(own.port());
  typename TypeParam::Request list;
  list.set_list_services("");
  EXPECT_EQ(stream.Ask(list).list_services_response().service_size(), 2);
  EXPECT_TRUE(stream.Close().ok());
}

// A pool of two files: test.Base with an extension range, and test.Ext,
// which extends it (numbers declared out of order) and has a service.
std::unique_ptr<pb::DescriptorPool> PoolWithExtensions() {
  auto pool = std::make_unique<pb::DescriptorPool>();
  for (const char* text : {
           R"pb(name: "test/base.proto"
                package: "test"
                message_type {
                  name: "Base"
                  extension_range { start: 100 end: 200 }
                })pb",
           R"pb(name: "test/ext.proto"
                package: "test"
                dependency: "test/base.proto"
                extension {
                  name: "later"
                  number: 150
                  label: LABEL_OPTIONAL
                  type: TYPE_INT32
                  extendee: ".test.Base"
                }
                extension {
                  name: "first"
                  number: 100
                  label: LABEL_OPTIONAL
                  type: TYPE_STRING
                  extendee: ".test.Base"
                }
                service { name: "Svc" })pb"}) {
    pb::FileDescriptorProto file;
    EXPECT_TRUE(pb::TextFormat::ParseFromString(text, &file)) << text;
    EXPECT_NE(pool->BuildFile(file), nullptr) << text;
  }
  return pool;
}

TYPED_TEST(ReflectionOwnServerTest, ExtensionsOfAType) {
  const std::unique_ptr<pb::DescriptorPool> pool = PoolWithExtensions();
  ReflectionService::Options options = Options({"test.Svc"});
  options.pool = pool.get();
  OwnServer own(std::move(options));
  Stream<TypeParam> stream(own.port());
  typename TypeParam::Request request;
  request.set_all_extension_numbers_of_type("test.Base");
  auto response = stream.Ask(request);
  ASSERT_TRUE(response.has_all_extension_numbers_response()) << response.DebugString();
  EXPECT_EQ(response.all_extension_numbers_response().base_type_name(), "test.Base");
  EXPECT_EQ(std::vector<int>(response.all_extension_numbers_response().extension_number().begin(),
                             response.all_extension_numbers_response().extension_number().end()),
            (std::vector<int>{100, 150}));

  request.mutable_file_containing_extension()->set_containing_type("test.Base");
  request.mutable_file_containing_extension()->set_extension_number(150);
  response = stream.Ask(request);
  EXPECT_EQ(FileNames(response), (std::vector<std::string>{"test/ext.proto", "test/base.proto"}));
  EXPECT_NE(BuildPool(response)->FindExtensionByName("test.later"), nullptr);

  request.mutable_file_containing_extension()->set_extension_number(120);
  response = stream.Ask(request);
  EXPECT_EQ(response.error_response().error_code(), 5) << response.DebugString();

  EXPECT_EQ(FileNames(stream.Symbol("test.first")), std::vector<std::string>{"test/ext.proto"});
  request.set_list_services("");
  response = stream.Ask(request);
  ASSERT_EQ(response.list_services_response().service_size(), 1);
  EXPECT_EQ(response.list_services_response().service(0).name(), "test.Svc");
  EXPECT_TRUE(stream.Close().ok());
}

TEST(ReflectionServiceCreateTest, RefusesAServiceNotInTheGeneratedDescriptors) {
  ReflectionService::Options options;
  options.services = {"attention.v1.NoSuchService"};
  const auto service = ReflectionService::Create(options);
  EXPECT_EQ(service.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(service.status().message(), "'attention.v1.NoSuchService'"));
  options.services = {};
  options.pool = nullptr;
  EXPECT_EQ(ReflectionService::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attn::server
