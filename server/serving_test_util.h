// Helpers the in-process gRPC tests of the server share.
#ifndef ATTN_SERVER_SERVING_TEST_UTIL_H_
#define ATTN_SERVER_SERVING_TEST_UTIL_H_

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "server/attention_server.h"

namespace attn::server {

// Holds the executor inside its first batch until Release(): what is queued
// meanwhile stays queued, and a call in that batch is computed only after
// the test has acted on it.
class ExecutorGate {
 public:
  AttentionServer::BeforeBatch Hook() {
    return [this](const auto& /*calls*/) {
      if (batches_.fetch_add(1) == 0) {
        entered_.set_value();
        released_.wait();
      }
    };
  }
  void WaitEntered() { entered_.get_future().wait(); }
  void Release() {
    if (!released_flag_.exchange(true)) release_.set_value();
  }
  int batches() const { return batches_.load(); }
  ~ExecutorGate() { Release(); }

 private:
  std::atomic<int> batches_{0};
  std::promise<void> entered_, release_;
  std::shared_future<void> released_ = release_.get_future().share();
  std::atomic<bool> released_flag_{false};
};

// One small float32 model, "small" (embed_dim 16, 2 heads, sequences of at
// most 8 tokens), with random weights: for tests of the server around it.
inline std::unique_ptr<ModelRepository> SmallModelRepository() {
  Model m;
  m.name = "small";
  m.config.embed_dim = 16;
  m.config.num_heads = 2;
  m.max_seq_len = 8;
  m.max_request_tokens = 8;
  m.mha =
      *core::MultiHeadAttention::Create(m.config, core::RandomAttentionWeights(m.config, 1), {});
  std::vector<Model> models;
  models.push_back(std::move(m));
  return ModelRepository::FromModels(std::move(models));
}

// The FLOAT32 raw_data of a tensor.
inline std::vector<float> RawFloats(const attention::v1::Tensor& t) {
  std::vector<float> v(t.raw_data().size() / sizeof(float));
  if (!v.empty()) std::memcpy(v.data(), t.raw_data().data(), v.size() * sizeof(float));
  return v;
}

// A connected TCP socket to 127.0.0.1:port, closed when it goes.
class Connection {
 public:
  explicit Connection(int port) : fd_(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = fd_ >= 0 && connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~Connection() {
    if (fd_ >= 0) close(fd_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  bool connected() const { return connected_; }
  bool Send(const std::string& bytes) {
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // Everything until the peer closes, or nullopt if `timeout` passes first.
  std::optional<std::string> ReadToEnd(std::chrono::milliseconds timeout) {
    std::string got;
    const auto give_up = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          give_up - std::chrono::steady_clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0)
        return std::nullopt;
      char buf[4096];
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return got;
      got.append(buf, static_cast<size_t>(n));
    }
  }

 private:
  const int fd_;
  bool connected_ = false;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_SERVING_TEST_UTIL_H_
