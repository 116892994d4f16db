// A C interface to libtorch's torch.distributed (c10d) for the Rust `ProcessGroup`
// (trainer/src/distributed/): the TCP rendezvous store, a Gloo process group (CPU) and, when built
// with SPATIALTHINKER_NCCL, an NCCL one (CUDA), with the collectives the trainer uses. Every call
// catches C++ exceptions and returns them as a message; nothing here throws across the C boundary.
// Design and protocol: docs/distributed.md.

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef SPATIALTHINKER_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

// A heap copy of `what` for the Rust side, which frees it with st_free_string.
char* copy_message(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, what, n + 1);
  }
  return out;
}

// Runs `body`, turning an exception into a message in *err and the return value -1.
template <typename F>
int guarded(char** err, F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("unknown C++ exception");
  }
  return -1;
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp::SUM;
    case 1:
      return c10d::ReduceOp::MAX;
    case 2:
      return c10d::ReduceOp::MIN;
    default:
      throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

// Waits for `work` up to `timeout`; a timeout or a failed collective throws with `what` named.
void finish(
    const c10::intrusive_ptr<c10d::Work>& work,
    std::chrono::milliseconds timeout,
    const char* what) {
  bool done = false;
  try {
    done = work->wait(timeout);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(what) + ": " + e.what());
  }
  if (!done) {
    throw std::runtime_error(
        std::string(what) + " did not complete within " +
        std::to_string(timeout.count() / 1000) + " s");
  }
}

} // namespace

struct st_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct st_group {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

extern "C" {

void st_free_string(char* s) {
  std::free(s);
}

// Whether this build can make NCCL process groups.
int st_has_nccl() {
#ifdef SPATIALTHINKER_NCCL
  return 1;
#else
  return 0;
#endif
}

// The rendezvous store at host:port: rank 0 serves it (`is_server`) and waits until `world`
// clients have joined; a client joins by counting itself (`join`), an extra connection of a rank
// that already joined does not.
st_store* st_store_new(
    const char* host,
    int port,
    int is_server,
    int world,
    int join,
    int64_t timeout_ms,
    char** err) {
  st_store* out = nullptr;
  guarded(err, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<size_t>(world);
    opts.waitWorkers = join != 0;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    out = new st_store{store};
  });
  return out;
}

void st_store_free(st_store* s) {
  delete s;
}

// Atomically adds `delta` to the integer at `key` (created at 0) and returns the new value.
int st_store_add(st_store* s, const char* key, int64_t delta, int64_t* value, char** err) {
  return guarded(err, [&] { *value = s->store->add(std::string(key), delta); });
}

// Sets `key` to `len` bytes.
int st_store_set(st_store* s, const char* key, const uint8_t* data, size_t len, char** err) {
  return guarded(err, [&] {
    std::vector<uint8_t> value(data, data + len);
    s->store->set(std::string(key), value);
  });
}

// The value of `key` when it exists: *found = 0 and nothing copied otherwise. The bytes are
// returned in a malloc'd buffer the caller frees with st_free_string.
int st_store_try_get(
    st_store* s,
    const char* key,
    uint8_t** data,
    size_t* len,
    int* found,
    char** err) {
  return guarded(err, [&] {
    std::string k(key);
    *found = s->store->check({k}) ? 1 : 0;
    *data = nullptr;
    *len = 0;
    if (*found) {
      auto value = s->store->get(k);
      *len = value.size();
      *data = static_cast<uint8_t*>(std::malloc(value.size() + 1));
      if (*data == nullptr) {
        throw std::bad_alloc();
      }
      std::memcpy(*data, value.data(), value.size());
    }
  });
}

// A process group over `store`: backend 0 is Gloo (its transport bound to `hostname`), 1 is NCCL.
st_group* st_group_new(
    st_store* s,
    int backend,
    int rank,
    int world,
    const char* hostname,
    int64_t timeout_ms,
    char** err) {
  st_group* out = nullptr;
  guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    if (backend == 0) {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(std::string(hostname)));
      auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(s->store, rank, world, opts);
      out = new st_group{pg, timeout};
    } else if (backend == 1) {
#ifdef SPATIALTHINKER_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s->store, rank, world, opts);
      out = new st_group{pg, timeout};
#else
      throw std::runtime_error(
          "this binary was built without NCCL (build with the `cuda` feature and NCCL headers)");
#endif
    } else {
      throw std::invalid_argument("unknown backend " + std::to_string(backend));
    }
  });
  return out;
}

void st_group_free(st_group* g) {
  delete g;
}

// In-place all-reduce of one tensor (op: 0 sum, 1 max, 2 min).
int st_all_reduce(st_group* g, at::Tensor* t, int op, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = g->timeout;
    finish(g->backend->allreduce(tensors, opts), g->timeout, "all_reduce");
  });
}

// In-place broadcast of one tensor from `root`.
int st_broadcast(st_group* g, at::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = g->timeout;
    finish(g->backend->broadcast(tensors, opts), g->timeout, "broadcast");
  });
}

// `output` ([world × n] contiguous) receives every rank's `input` ([n]) in rank order.
int st_all_gather(st_group* g, at::Tensor* output, at::Tensor* input, char** err) {
  return guarded(err, [&] {
    c10d::AllgatherOptions opts;
    opts.timeout = g->timeout;
    finish(g->backend->_allgather_base(*output, *input, opts), g->timeout, "all_gather");
  });
}

// `output` ([n]) receives the reduction over ranks of slice `rank` of `input` ([world × n]).
int st_reduce_scatter(st_group* g, at::Tensor* output, at::Tensor* input, int op, char** err) {
  return guarded(err, [&] {
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = g->timeout;
    finish(
        g->backend->_reduce_scatter_base(*output, *input, opts), g->timeout, "reduce_scatter");
  });
}

int st_barrier(st_group* g, char** err) {
  return guarded(err, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = g->timeout;
    finish(g->backend->barrier(opts), g->timeout, "barrier");
  });
}

} // extern "C"
