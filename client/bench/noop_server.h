// --noop_baseline: a server that answers every Attend with a canned
// response of the real size and does no work (session calls too: a
// stateless CreateSession/CloseSession/GetSession, and a session Attend's
// session_length is its expected_length plus its query rows), in a child process (this
// binary again, with --serve_noop) so a call crosses processes as it does to
// attention-server.
#ifndef ATTN_CLIENT_BENCH_NOOP_SERVER_H_
#define ATTN_CLIENT_BENCH_NOOP_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "attention/v1/attention.pb.h"
#include "grpcpp/impl/service_type.h"

namespace attn::bench {

// The parent's handle on the child. Thread-compatible.
class NoopChild {
 public:
  // Writes `canned` to a temporary file, starts /proc/self/exe
  // --serve_noop=FILE and reads the port it prints. Unavailable when any of
  // that fails.
  static absl::StatusOr<std::unique_ptr<NoopChild>> Start(
      const attention::v1::AttendResponse& canned);
  // Closes the child's stdin (it exits), waits for it, removes the file.
  ~NoopChild();
  // The child's loopback port.
  int port() const { return port_; }

 private:
  NoopChild(pid_t pid, int stdin_fd, std::string path)
      : pid_(pid), stdin_(stdin_fd), path_(std::move(path)) {}
  const pid_t pid_;
  const int stdin_;
  const std::string path_;
  int port_ = 0;
};

// The no-op service itself (for in-process tests): answers as described
// above with `canned`.
std::unique_ptr<grpc::Service> MakeNoopService(attention::v1::AttendResponse canned);

// --serve_noop: the child's whole life. Serves the AttendResponse in `path`
// on a free loopback port, prints "port=N", runs until stdin closes; 0
// then, 2 when it cannot read the file or listen (a message on stderr).
int ServeNoop(const std::string& path);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_NOOP_SERVER_H_
