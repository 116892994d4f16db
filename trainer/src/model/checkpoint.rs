//! Gradient checkpointing (activation recomputation) for a stack of layers, exact, without a
//! custom autograd `Function` (tch has none; docs/architecture.md, "Memory").
//!
//! [`RecomputeTape::run`] runs the layers without grad and keeps only each layer's input; the
//! stack's output is handed on as a fresh leaf, so the layers above build their graph on it as
//! usual. [`RecomputeTape::backward`] first backpropagates the loss down to those leaves, then,
//! stack by stack from the last one recorded, layer by layer from the top: it makes the saved
//! input a leaf, recomputes the layer with grad, and backpropagates `sum(y · g)`, whose gradient
//! with respect to `y` is exactly the `g` that reached the layer's output; the leaf's gradient is
//! the next layer's `g`. Parameters accumulate their gradients as in a plain backward; the stack's
//! original input (which may carry the graph of the embedding or of another stack) finally
//! receives its gradient the same way. Only one layer's activations are alive at a time, for one
//! extra forward per layer.

use tch::Tensor;

use super::ModelError;

/// Recomputes layer `i` of a stack from its input.
type LayerFn<'m> = Box<dyn Fn(usize, &Tensor) -> Result<Tensor, ModelError> + 'm>;

/// One checkpointed stack (the decoder layers, or the vision tower's blocks).
struct Stack<'m> {
    /// The stack's input as the forward received it, with whatever graph it carries.
    input: Tensor,
    /// Each layer's input, kept instead of the layer's activations (no graph).
    layer_inputs: Vec<Tensor>,
    /// The stack's output as handed on: a leaf that collects the gradient from above.
    output: Tensor,
    /// The layers, to recompute.
    layer: LayerFn<'m>,
}

/// The checkpointed stacks of one forward, in the order they ran, waiting for the backward.
#[derive(Default)]
pub struct RecomputeTape<'m> {
    stacks: Vec<Stack<'m>>,
}

impl std::fmt::Debug for RecomputeTape<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layers: Vec<usize> = self.stacks.iter().map(|s| s.layer_inputs.len()).collect();
        f.debug_struct("RecomputeTape")
            .field("layers_per_stack", &layers)
            .finish()
    }
}

impl<'m> RecomputeTape<'m> {
    /// An empty tape.
    pub fn new() -> Self {
        RecomputeTape { stacks: Vec::new() }
    }

    /// Whether no stack was recorded.
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    /// Runs `layers` layers (`layer(i, x)` is layer `i` applied to `x`) on `input` without
    /// keeping their activations, and records them for [`RecomputeTape::backward`]. Returns the
    /// stack's output as a leaf that requires grad.
    pub fn run(
        &mut self,
        input: &Tensor,
        layers: usize,
        layer: impl Fn(usize, &Tensor) -> Result<Tensor, ModelError> + 'm,
    ) -> Result<Tensor, ModelError> {
        let mut layer_inputs = Vec::with_capacity(layers);
        let mut h = input.f_detach()?;
        {
            let _no_grad = tch::no_grad_guard();
            for i in 0..layers {
                layer_inputs.push(h.shallow_clone());
                h = layer(i, &h)?;
            }
        }
        let output = h.f_detach()?.f_set_requires_grad(true)?;
        self.stacks.push(Stack {
            input: input.shallow_clone(),
            layer_inputs,
            output: output.shallow_clone(),
            layer: Box::new(layer),
        });
        Ok(output)
    }

    /// Backpropagates `loss` (a scalar built on the outputs of [`RecomputeTape::run`]) through
    /// the recorded stacks and everything below them, accumulating parameter gradients exactly as
    /// `loss.backward()` would without checkpointing. Consumes the tape.
    pub fn backward(self, loss: &Tensor) -> Result<(), ModelError> {
        loss.f_backward()?;
        for stack in self.stacks.into_iter().rev() {
            let mut grad = stack.output.f_grad()?;
            if !grad.defined() {
                // nothing above used this stack's output
                continue;
            }
            for (i, saved) in stack.layer_inputs.iter().enumerate().rev() {
                let x = saved.f_detach()?.f_set_requires_grad(true)?;
                let y = (stack.layer)(i, &x)?;
                y.f_mul(&grad)?.f_sum(y.kind())?.f_backward()?;
                grad = x.f_grad()?;
                if x.device() == tch::Device::Cpu {
                    release_freed_host_memory();
                }
            }
            if stack.input.requires_grad() {
                let x = &stack.input;
                x.f_mul(&grad)?.f_sum(x.kind())?.f_backward()?;
            }
        }
        Ok(())
    }
}

/// Returns freed heap memory to the system. glibc keeps freed blocks of its heap resident, so
/// without this a CPU process grows by the freed activations of every recomputed layer (measured:
/// +0.25 GiB per layer of the `deep-random` preset) although the live tensors stay one layer's
/// worth; after each layer the resident memory follows the live tensors again.
fn release_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands free pages of the allocator's own heaps back to the kernel
    // (under the arenas' locks); no live allocation is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether autograd records operations on this thread right now (tch has no query).
pub fn grad_mode_enabled() -> bool {
    // SAFETY: reads the thread-local grad mode by setting it and putting the old value back.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Resident memory of this process in bytes.
    fn rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    /// Heap blocks freed without the release stay resident; the release returns them.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn released_heap_memory_leaves_the_process() {
        // below glibc's smallest mmap threshold, so the blocks come from the heap: 128 MiB
        const BLOCK: usize = 64 << 10;
        const BLOCKS: usize = 2048;
        // SAFETY (every unsafe block below): plain malloc/free of blocks this test owns; each
        // block is written before it is freed, so its pages are resident; none is used after
        // its free.
        let blocks: Vec<*mut u8> = (0..BLOCKS)
            .map(|_| unsafe {
                let p = libc::malloc(BLOCK) as *mut u8;
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 1, BLOCK);
                p
            })
            .collect();
        // a block above the others, so freeing them cannot shrink the heap from its top
        let fence = unsafe { libc::malloc(BLOCK) };
        for p in blocks {
            unsafe { libc::free(p as *mut libc::c_void) };
        }
        let before = rss();
        release_freed_host_memory();
        let after = rss();
        unsafe { libc::free(fence) };
        assert!(
            before.saturating_sub(after) >= (BLOCK * BLOCKS / 2) as u64,
            "released {} MiB of 128",
            before.saturating_sub(after) >> 20
        );
    }

    /// A two-layer tanh MLP stack on a graph-carrying input: checkpointed gradients of the
    /// weights and of the input's own parameter equal the plain backward's.
    #[test]
    fn recomputed_backward_equals_plain_backward() {
        tch::manual_seed(3);
        let opts = (Kind::Double, Device::Cpu);
        let w: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn([5, 5], opts).set_requires_grad(true))
            .collect();
        let base = Tensor::randn([4, 5], opts).set_requires_grad(true);
        let layer = |i: usize, x: &Tensor| -> Result<Tensor, ModelError> {
            Ok(x.f_matmul(&w[i])?.f_tanh()?.f_add(x)?)
        };
        let loss_of = |h: &Tensor| h.pow_tensor_scalar(2).sum(Kind::Double);
        let grads = || -> Vec<Tensor> {
            w.iter()
                .chain([&base])
                .map(|t| t.grad().copy())
                .collect::<Vec<_>>()
        };
        let zero = || {
            for t in w.iter().chain([&base]) {
                let mut t = t.shallow_clone();
                t.zero_grad();
            }
        };

        // plain
        let mut h = base.sin();
        for i in 0..3 {
            h = layer(i, &h).unwrap();
        }
        loss_of(&h).backward();
        let plain = grads();
        zero();

        // checkpointed
        let mut tape = RecomputeTape::new();
        let out = tape.run(&base.sin(), 3, layer).unwrap();
        tape.backward(&loss_of(&out)).unwrap();
        let recomputed = grads();
        assert!(grad_mode_enabled());
        assert!(!tch::no_grad(grad_mode_enabled));
        for (a, b) in plain.iter().zip(&recomputed) {
            let diff = f64::try_from((a - b).abs().max()).unwrap();
            assert!(diff < 1e-12, "gradient differs by {diff}");
            assert!(f64::try_from(a.abs().sum(Kind::Double)).unwrap() > 0.0);
        }
    }
}
