// Declarations only (see README.md next to this file). `ProcessGroupGloo::setTimeout`, an inline
// virtual in the c10d header, names `Context::setTimeout`; it is never emitted in this project's
// code (the class's vtable lives in libtorch), so the declaration is all the compiler needs.
#pragma once
#include <chrono>
namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
