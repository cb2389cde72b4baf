// Pins the wire identity of the Open Inference Protocol protos: package,
// service and RPC names, and the field and enum numbers of the messages
// clients exchange most, as KServe's grpc_predict_v2.proto and Triton's
// grpc_service.proto / model_config.proto define them. A typo in a number
// breaks every upstream client silently; here it fails a test.
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.pb.h"
#include "inference/model_config.pb.h"

namespace {

using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::FieldDescriptor;

struct Field {
  const char* name;
  int number;
  FieldDescriptor::Type type;
  bool repeated = false;
};

// Checks that message `full_name` has exactly `fields` (names, numbers,
// types, cardinality).
void ExpectFields(const std::string& full_name, const std::vector<Field>& fields) {
  SCOPED_TRACE(full_name);
  const Descriptor* message = DescriptorPool::generated_pool()->FindMessageTypeByName(full_name);
  ASSERT_NE(message, nullptr);
  EXPECT_EQ(message->field_count(), static_cast<int>(fields.size()));
  for (const Field& want : fields) {
    const FieldDescriptor* got = message->FindFieldByName(want.name);
    ASSERT_NE(got, nullptr) << want.name;
    EXPECT_EQ(got->number(), want.number) << want.name;
    EXPECT_EQ(got->type(), want.type) << want.name;
    EXPECT_EQ(got->is_repeated(), want.repeated) << want.name;
  }
}

constexpr auto kBool = FieldDescriptor::TYPE_BOOL;
constexpr auto kString = FieldDescriptor::TYPE_STRING;
constexpr auto kBytes = FieldDescriptor::TYPE_BYTES;
constexpr auto kInt32 = FieldDescriptor::TYPE_INT32;
constexpr auto kInt64 = FieldDescriptor::TYPE_INT64;
constexpr auto kUint32 = FieldDescriptor::TYPE_UINT32;
constexpr auto kUint64 = FieldDescriptor::TYPE_UINT64;
constexpr auto kFloat = FieldDescriptor::TYPE_FLOAT;
constexpr auto kDouble = FieldDescriptor::TYPE_DOUBLE;
constexpr auto kMessage = FieldDescriptor::TYPE_MESSAGE;
constexpr auto kEnum = FieldDescriptor::TYPE_ENUM;

TEST(InferenceProtoTest, ServiceHasUpstreamNamesAndStreaming) {
  const auto* service =
      DescriptorPool::generated_pool()->FindServiceByName("inference.GRPCInferenceService");
  ASSERT_NE(service, nullptr);
  const std::vector<std::string> rpcs = {
      "ServerLive",      "ServerReady",     "ModelReady",          "ServerMetadata",
      "ModelMetadata",   "ModelInfer",      "ModelStreamInfer",    "ModelConfig",
      "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"};
  EXPECT_EQ(service->method_count(), static_cast<int>(rpcs.size()));
  for (const std::string& name : rpcs) {
    const auto* method = service->FindMethodByName(name);
    ASSERT_NE(method, nullptr) << name;
    const bool stream = name == "ModelStreamInfer";
    if (!stream) {
      EXPECT_EQ(method->input_type()->full_name(), "inference." + name + "Request");
      EXPECT_EQ(method->output_type()->full_name(), "inference." + name + "Response");
    }
    EXPECT_EQ(method->client_streaming(), stream) << name;
    EXPECT_EQ(method->server_streaming(), stream) << name;
  }
  const auto* stream = service->FindMethodByName("ModelStreamInfer");
  EXPECT_EQ(stream->input_type()->full_name(), "inference.ModelInferRequest");
  EXPECT_EQ(stream->output_type()->full_name(), "inference.ModelStreamInferResponse");
}

TEST(InferenceProtoTest, InferMessagesHaveUpstreamNumbers) {
  ExpectFields("inference.InferParameter", {{"bool_param", 1, kBool},
                                            {"int64_param", 2, kInt64},
                                            {"string_param", 3, kString},
                                            {"double_param", 4, kDouble},
                                            {"uint64_param", 5, kUint64}});
  ExpectFields("inference.InferTensorContents", {{"bool_contents", 1, kBool, true},
                                                 {"int_contents", 2, kInt32, true},
                                                 {"int64_contents", 3, kInt64, true},
                                                 {"uint_contents", 4, kUint32, true},
                                                 {"uint64_contents", 5, kUint64, true},
                                                 {"fp32_contents", 6, kFloat, true},
                                                 {"fp64_contents", 7, kDouble, true},
                                                 {"bytes_contents", 8, kBytes, true}});
  ExpectFields("inference.ModelInferRequest", {{"model_name", 1, kString},
                                               {"model_version", 2, kString},
                                               {"id", 3, kString},
                                               {"parameters", 4, kMessage, true},
                                               {"inputs", 5, kMessage, true},
                                               {"outputs", 6, kMessage, true},
                                               {"raw_input_contents", 7, kBytes, true}});
  ExpectFields("inference.ModelInferRequest.InferInputTensor", {{"name", 1, kString},
                                                                {"datatype", 2, kString},
                                                                {"shape", 3, kInt64, true},
                                                                {"parameters", 4, kMessage, true},
                                                                {"contents", 5, kMessage}});
  ExpectFields("inference.ModelInferRequest.InferRequestedOutputTensor",
               {{"name", 1, kString}, {"parameters", 2, kMessage, true}});
  ExpectFields("inference.ModelInferResponse", {{"model_name", 1, kString},
                                                {"model_version", 2, kString},
                                                {"id", 3, kString},
                                                {"parameters", 4, kMessage, true},
                                                {"outputs", 5, kMessage, true},
                                                {"raw_output_contents", 6, kBytes, true}});
  ExpectFields("inference.ModelInferResponse.InferOutputTensor", {{"name", 1, kString},
                                                                  {"datatype", 2, kString},
                                                                  {"shape", 3, kInt64, true},
                                                                  {"parameters", 4, kMessage, true},
                                                                  {"contents", 5, kMessage}});
  ExpectFields("inference.ModelStreamInferResponse",
               {{"error_message", 1, kString}, {"infer_response", 2, kMessage}});
  // The parameter maps are map<string, InferParameter>.
  const auto* params = inference::ModelInferRequest::descriptor()->FindFieldByName("parameters");
  ASSERT_TRUE(params->is_map());
  EXPECT_EQ(params->message_type()->map_value()->message_type()->full_name(),
            "inference.InferParameter");
}

TEST(InferenceProtoTest, MetadataMessagesHaveUpstreamNumbers) {
  ExpectFields("inference.ServerLiveResponse", {{"live", 1, kBool}});
  ExpectFields("inference.ServerReadyResponse", {{"ready", 1, kBool}});
  ExpectFields("inference.ModelReadyRequest", {{"name", 1, kString}, {"version", 2, kString}});
  ExpectFields("inference.ModelReadyResponse", {{"ready", 1, kBool}});
  ExpectFields("inference.ServerMetadataResponse",
               {{"name", 1, kString}, {"version", 2, kString}, {"extensions", 3, kString, true}});
  ExpectFields("inference.ModelMetadataRequest", {{"name", 1, kString}, {"version", 2, kString}});
  ExpectFields("inference.ModelMetadataResponse", {{"name", 1, kString},
                                                   {"versions", 2, kString, true},
                                                   {"platform", 3, kString},
                                                   {"inputs", 4, kMessage, true},
                                                   {"outputs", 5, kMessage, true}});
  ExpectFields("inference.ModelMetadataResponse.TensorMetadata",
               {{"name", 1, kString}, {"datatype", 2, kString}, {"shape", 3, kInt64, true}});
}

TEST(InferenceProtoTest, StatisticsMessagesHaveTritonNumbers) {
  ExpectFields("inference.ModelStatisticsRequest", {{"name", 1, kString}, {"version", 2, kString}});
  ExpectFields("inference.StatisticDuration", {{"count", 1, kUint64}, {"ns", 2, kUint64}});
  ExpectFields("inference.InferStatistics", {{"success", 1, kMessage},
                                             {"fail", 2, kMessage},
                                             {"queue", 3, kMessage},
                                             {"compute_input", 4, kMessage},
                                             {"compute_infer", 5, kMessage},
                                             {"compute_output", 6, kMessage},
                                             {"cache_hit", 7, kMessage},
                                             {"cache_miss", 8, kMessage}});
  ExpectFields("inference.InferBatchStatistics", {{"batch_size", 1, kUint64},
                                                  {"compute_input", 2, kMessage},
                                                  {"compute_infer", 3, kMessage},
                                                  {"compute_output", 4, kMessage}});
  ExpectFields("inference.ModelStatistics", {{"name", 1, kString},
                                             {"version", 2, kString},
                                             {"last_inference", 3, kUint64},
                                             {"inference_count", 4, kUint64},
                                             {"execution_count", 5, kUint64},
                                             {"inference_stats", 6, kMessage},
                                             {"batch_stats", 7, kMessage, true},
                                             {"memory_usage", 8, kMessage, true},
                                             {"response_stats", 9, kMessage, true}});
  ExpectFields("inference.ModelStatisticsResponse", {{"model_stats", 1, kMessage, true}});
}

TEST(InferenceProtoTest, RepositoryMessagesHaveTritonNumbers) {
  ExpectFields("inference.RepositoryIndexRequest",
               {{"repository_name", 1, kString}, {"ready", 2, kBool}});
  ExpectFields("inference.RepositoryIndexResponse.ModelIndex", {{"name", 1, kString},
                                                                {"version", 2, kString},
                                                                {"state", 3, kString},
                                                                {"reason", 4, kString}});
  for (const char* load :
       {"inference.RepositoryModelLoadRequest", "inference.RepositoryModelUnloadRequest"}) {
    ExpectFields(load, {{"repository_name", 1, kString},
                        {"model_name", 2, kString},
                        {"parameters", 3, kMessage, true}});
  }
  ExpectFields("inference.ModelRepositoryParameter", {{"bool_param", 1, kBool},
                                                      {"int64_param", 2, kInt64},
                                                      {"string_param", 3, kString},
                                                      {"bytes_param", 4, kBytes}});
}

TEST(InferenceProtoTest, ModelConfigHasTritonNumbers) {
  ExpectFields("inference.ModelConfigRequest", {{"name", 1, kString}, {"version", 2, kString}});
  ExpectFields("inference.ModelConfigResponse", {{"config", 1, kMessage}});
  ExpectFields("inference.ModelConfig", {{"name", 1, kString},
                                         {"platform", 2, kString},
                                         {"backend", 17, kString},
                                         {"max_batch_size", 4, kInt32},
                                         {"input", 5, kMessage, true},
                                         {"output", 6, kMessage, true},
                                         {"dynamic_batching", 11, kMessage},
                                         {"instance_group", 7, kMessage, true},
                                         {"parameters", 14, kMessage, true},
                                         {"model_transaction_policy", 19, kMessage}});
  ExpectFields("inference.ModelInput", {{"name", 1, kString},
                                        {"data_type", 2, kEnum},
                                        {"dims", 4, kInt64, true},
                                        {"optional", 8, kBool}});
  ExpectFields("inference.ModelOutput",
               {{"name", 1, kString}, {"data_type", 2, kEnum}, {"dims", 3, kInt64, true}});
  ExpectFields("inference.ModelDynamicBatching", {{"preferred_batch_size", 1, kInt32, true},
                                                  {"max_queue_delay_microseconds", 2, kUint64},
                                                  {"preserve_ordering", 3, kBool}});
  ExpectFields("inference.ModelInstanceGroup",
               {{"name", 1, kString}, {"count", 2, kInt32}, {"kind", 4, kEnum}});
  ExpectFields("inference.ModelParameter", {{"string_value", 1, kString}});
  ExpectFields("inference.ModelTransactionPolicy", {{"decoupled", 1, kBool}});

  EXPECT_EQ(inference::TYPE_INVALID, 0);
  EXPECT_EQ(inference::TYPE_BOOL, 1);
  EXPECT_EQ(inference::TYPE_INT32, 8);
  EXPECT_EQ(inference::TYPE_INT64, 9);
  EXPECT_EQ(inference::TYPE_FP16, 10);
  EXPECT_EQ(inference::TYPE_FP32, 11);
  EXPECT_EQ(inference::TYPE_STRING, 13);
  EXPECT_EQ(inference::TYPE_BF16, 14);
  EXPECT_EQ(inference::ModelInstanceGroup::KIND_CPU, 2);
}

}  // namespace
