#include "client/bench/noop_server.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace attn::bench {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

namespace {

// The no-op baseline: answers every Attend with a canned response of the
// size the real server would send, without computing anything.
class NoopService final : public attention::v1::AttentionService::CallbackService {
 public:
  explicit NoopService(AttendResponse canned) : canned_(std::move(canned)) {}
  // A session request also gets the length it would have (expected_length
  // plus its query rows), so a client tracking lengths goes on.
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const AttendRequest* request,
                                   AttendResponse* response) override {
    *response = canned_;
    if (!request->session_id().empty()) {
      const auto& shape = request->query().shape();
      response->set_session_length(request->expected_length() +
                                   (shape.size() >= 2 ? shape[shape.size() - 2] : 0));
    }
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  // Sessions are answered without state: any id is open and empty.
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const attention::v1::CreateSessionRequest* request,
                                          attention::v1::SessionInfo* info) override {
    info->set_session_id(absl::StrCat("noop-", next_id_.fetch_add(1)));
    info->set_model_name(request->model_name());
    info->set_max_tokens(request->max_tokens());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const attention::v1::CloseSessionRequest*,
                                         attention::v1::CloseSessionResponse*) override {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const attention::v1::GetSessionRequest* request,
                                       attention::v1::SessionInfo* info) override {
    info->set_session_id(request->session_id());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const AttendResponse canned_;
  std::atomic<int64_t> next_id_{1};
};

}  // namespace

std::unique_ptr<grpc::Service> MakeNoopService(AttendResponse canned) {
  return std::make_unique<NoopService>(std::move(canned));
}

// The child reads the canned response from a file, prints its port, and exits
// when its stdin closes (when the NoopChild goes, or this process dies).
absl::StatusOr<std::unique_ptr<NoopChild>> NoopChild::Start(const AttendResponse& canned) {
  char path[] = "/tmp/attention-bench-noop-XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) return absl::UnavailableError("cannot create a temporary file");
  const std::string bytes = canned.SerializeAsString();
  const bool written =
      ::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
  ::close(fd);
  if (!written) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  int to_child[2], from_child[2];
  if (::pipe(to_child) != 0 || ::pipe(from_child) != 0) return absl::UnavailableError("pipe");
  // Everything the child needs is built before fork: between fork and exec
  // a threaded process may only make async-signal-safe calls.
  const std::string flag = absl::StrCat("--serve_noop=", path);
  const pid_t pid = ::fork();
  if (pid < 0) return absl::UnavailableError("fork");
  if (pid == 0) {
    ::dup2(to_child[0], 0);
    ::dup2(from_child[1], 1);
    ::close(to_child[1]);
    ::close(from_child[0]);
    ::execl("/proc/self/exe", "attention-bench", flag.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  auto child = std::unique_ptr<NoopChild>(new NoopChild(pid, to_child[1], path));
  std::string line;
  char c;
  while (::read(from_child[0], &c, 1) == 1 && c != '\n') line.push_back(c);
  ::close(from_child[0]);
  if (!absl::StartsWith(line, "port=") || !absl::SimpleAtoi(line.substr(5), &child->port_)) {
    return absl::UnavailableError("the child did not report its port");
  }
  return child;
}

NoopChild::~NoopChild() {
  ::close(stdin_);
  int status;
  ::waitpid(pid_, &status, 0);
  ::unlink(path_.c_str());
}

int ServeNoop(const std::string& path) {
  AttendResponse canned;
  std::ifstream in(path, std::ios::binary);
  if (!in || !canned.ParseFromIstream(&in)) {
    std::cerr << "attention-bench: --serve_noop: cannot read " << path << "\n";
    return 2;
  }
  std::unique_ptr<grpc::Service> service = MakeNoopService(std::move(canned));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.SetMaxSendMessageSize(256 << 20);
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "attention-bench: --serve_noop: cannot listen\n";
    return 2;
  }
  std::printf("port=%d\n", port);
  std::fflush(stdout);
  // Until the parent closes our stdin (or dies).
  char buf[64];
  while (::read(0, buf, sizeof(buf)) > 0) {
  }
  server->Shutdown();
  return 0;
}

}  // namespace attn::bench
