// A single worker thread running submitted tasks in order. gRPC threads
// hand compute to it, so they never call oneDNN or block on compute.
//
// Thread-safe. The destructor runs every task already submitted, then joins.
#ifndef ATTN_SERVER_WORK_QUEUE_H_
#define ATTN_SERVER_WORK_QUEUE_H_

#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "core/mutex.h"

namespace attn::server {

class WorkQueue {
 public:
  WorkQueue();
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Queues `task`; returns false (and drops it) once shutdown has begun.
  bool Submit(std::function<void()> task);
  // Tasks waiting (not counting one running).
  size_t pending() const;

 private:
  void Run();

  mutable Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_WORK_QUEUE_H_
