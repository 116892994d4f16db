//! The decode head on the CPU: `lm_head` for a handful of rows
//! (`out[r, v] = Σ_d hidden[r, d] · weight[v, d]`) and the greedy pick over those logits.
//!
//! At decode time the head multiplies ~8 hidden rows by the whole `[V, D]` output matrix
//! (151,665 × D). MKL's sgemm copies ("packs") that large operand on every call, which costs more
//! than the product itself: on the tiny model it was 60% of a decode step. This kernel streams
//! each weight row from memory once and dots it with every hidden row while it is in cache, so a
//! step reads the weight once and writes only the logits. It is used for f32 on the CPU with at
//! most [`MAX_ROWS`] rows (see `super::lm_head::LmHead::output_logits`); everything
//! else goes to libtorch.
//!
//! The work is split over libtorch's own OpenMP team (the `GOMP_parallel` entry point of the
//! OpenMP runtime libtorch already loaded), not over a second thread pool: between two libtorch
//! ops that team's threads spin-wait for the next parallel region, and a second pool would fight
//! them for the cores.
//!
//! Summation order differs from MKL's, so results agree to rounding (≈1e-7 relative), not bit
//! for bit. The greedy pick ([`argmax_rows`]) is exact and follows `torch.argmax`: first index
//! of the maximum, a NaN counts as the maximum.

/// Largest number of hidden rows the kernel takes; more rows amortise the packing and go to sgemm.
pub const MAX_ROWS: usize = 16;

/// `out[r * vocab + v] = dot(hidden[r * dim ..][..dim], weight[v * dim ..][..dim])` for
/// `r < rows`, `v < vocab`, with `vocab = weight.len() / dim`, on `threads` threads.
///
/// # Panics
/// If the slice lengths do not agree with `rows` and `dim` (callers check shapes first).
pub fn matmul_transposed(
    hidden: &[f32],
    rows: usize,
    weight: &[f32],
    dim: usize,
    out: &mut [f32],
    threads: usize,
) {
    assert!(
        dim > 0 && weight.len().is_multiple_of(dim),
        "weight is not [V, {dim}]"
    );
    let vocab = weight.len() / dim;
    assert_eq!(hidden.len(), rows * dim, "hidden is not [{rows}, {dim}]");
    assert_eq!(out.len(), rows * vocab, "out is not [{rows}, {vocab}]");
    let operands = kernel::Operands {
        hidden,
        rows,
        weight,
        dim,
        vocab,
        out: SharedMut(out.as_mut_ptr()),
    };
    team::run(threads, &|part, parts| {
        // contiguous vocabulary ranges, aligned to the kernel's block of weight rows
        let blocks = vocab.div_ceil(kernel::V_BLOCK);
        let start = (blocks * part / parts * kernel::V_BLOCK).min(vocab);
        let end = (blocks * (part + 1) / parts * kernel::V_BLOCK).min(vocab);
        // SAFETY: the parts' `[start, end)` ranges are disjoint, so each output element is
        // written by one thread only, and `out` outlives `team::run`.
        unsafe { kernel::columns(operands, start..end) };
    });
}

/// Index of the largest value of each row of `logits [rows, cols]` (first one on ties; the first
/// NaN if a row has one, as `torch.argmax` does), rows spread over `threads` threads.
pub fn argmax_rows(logits: &[f32], rows: usize, threads: usize) -> Vec<usize> {
    assert!(
        rows > 0 && logits.len().is_multiple_of(rows),
        "logits is not [{rows}, C]"
    );
    let cols = logits.len() / rows;
    let mut best = vec![0usize; rows];
    let out = SharedMut(best.as_mut_ptr());
    team::run(threads.min(rows), &|part, parts| {
        for r in (rows * part / parts)..(rows * (part + 1) / parts) {
            let arg = argmax(&logits[r * cols..(r + 1) * cols]);
            // SAFETY: the parts' row ranges are disjoint and `r < rows = best.len()`.
            unsafe { *out.at(r) = arg };
        }
    });
    best
}

/// First index of the maximum (of the first NaN if there is one) in two vectorisable passes:
/// the maximum with eight lanes and a NaN flag, then a search for its first occurrence. A
/// single pass keeping the index is a serial compare-and-select chain, several times slower.
fn argmax(row: &[f32]) -> usize {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut nan = false;
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            lanes[k] = if c[k] > lanes[k] { c[k] } else { lanes[k] };
            nan |= c[k].is_nan();
        }
    }
    for &x in chunks.remainder() {
        lanes[0] = if x > lanes[0] { x } else { lanes[0] };
        nan |= x.is_nan();
    }
    if nan {
        return row.iter().position(|x| x.is_nan()).unwrap_or(0);
    }
    let max = lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    row.iter().position(|&x| x == max).unwrap_or(0)
}

/// An output buffer shared by the threads of [`team::run`], each writing its own elements.
struct SharedMut<T>(*mut T);

impl<T> SharedMut<T> {
    /// Pointer to element `i` (a method, so closures capture the whole `Sync` wrapper).
    fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: every user writes disjoint elements from its threads, and the buffer outlives the
// `team::run` call that shares it.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

/// The logits buffer of [`matmul_transposed`].
type SharedOut = SharedMut<f32>;

mod kernel {
    use std::ops::Range;

    use super::SharedOut;

    /// Weight rows handled together: each hidden-row load is shared by this many products.
    pub const V_BLOCK: usize = 4;

    /// One product: `hidden [rows, dim]`, `weight [vocab, dim]`, `out [rows, vocab]`.
    #[derive(Clone, Copy)]
    pub struct Operands<'a> {
        pub hidden: &'a [f32],
        pub rows: usize,
        pub weight: &'a [f32],
        pub dim: usize,
        pub vocab: usize,
        pub out: SharedOut,
    }

    /// Computes output columns `cols` of every row.
    ///
    /// # Safety
    /// No other thread may write these columns of `out`, which must hold `rows * vocab` floats.
    pub unsafe fn columns(p: Operands<'_>, cols: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            if p.dim.is_multiple_of(8)
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
            {
                return avx2::columns(p, cols);
            }
        }
        portable(p, cols)
    }

    /// Plain loops with eight partial sums per dot product, which compilers vectorise.
    ///
    /// # Safety
    /// As [`columns`].
    pub unsafe fn portable(p: Operands<'_>, cols: Range<usize>) {
        let dim = p.dim;
        for v in cols {
            let w = &p.weight[v * dim..(v + 1) * dim];
            for r in 0..p.rows {
                *p.out.at(r * p.vocab + v) = dot(&p.hidden[r * dim..(r + 1) * dim], w);
            }
        }
    }

    /// Dot product with eight independent partial sums.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let mut ac = a.chunks_exact(8);
        let mut bc = b.chunks_exact(8);
        for (x, y) in (&mut ac).zip(&mut bc) {
            for k in 0..8 {
                acc[k] += x[k] * y[k];
            }
        }
        let tail: f32 = ac
            .remainder()
            .iter()
            .zip(bc.remainder())
            .map(|(x, y)| x * y)
            .sum();
        acc.iter().sum::<f32>() + tail
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use std::arch::x86_64::*;
        use std::ops::Range;

        use super::{portable, Operands, V_BLOCK};

        /// AVX2/FMA register blocking: two hidden rows × four weight rows = eight 8-lane
        /// accumulators (eight independent FMA chains) per 8-wide slice of `dim`; the eight
        /// sums are reduced together with one `hadd` tree and stored four columns at a time.
        ///
        /// # Safety
        /// As [`super::columns`]; the CPU must support AVX2 and FMA, and `dim % 8 == 0`.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn columns(p: Operands<'_>, cols: Range<usize>) {
            let Operands {
                hidden,
                rows,
                weight,
                dim,
                vocab,
                out,
            } = p;
            let (h, w) = (hidden.as_ptr(), weight.as_ptr());
            let mut v = cols.start;
            while v + V_BLOCK <= cols.end {
                let wv = [0, 1, 2, 3].map(|j| w.add((v + j) * dim));
                let mut r = 0;
                while r + 2 <= rows {
                    let (h0, h1) = (h.add(r * dim), h.add((r + 1) * dim));
                    let mut a0 = [_mm256_setzero_ps(); V_BLOCK];
                    let mut a1 = [_mm256_setzero_ps(); V_BLOCK];
                    for d in (0..dim).step_by(8) {
                        let x0 = _mm256_loadu_ps(h0.add(d));
                        let x1 = _mm256_loadu_ps(h1.add(d));
                        for j in 0..V_BLOCK {
                            let y = _mm256_loadu_ps(wv[j].add(d));
                            a0[j] = _mm256_fmadd_ps(x0, y, a0[j]);
                            a1[j] = _mm256_fmadd_ps(x1, y, a1[j]);
                        }
                    }
                    // [r0: v..v+4 | r1: v..v+4]
                    let sums = reduce8(a0, a1);
                    _mm_storeu_ps(out.at(r * vocab + v), _mm256_castps256_ps128(sums));
                    _mm_storeu_ps(out.at((r + 1) * vocab + v), _mm256_extractf128_ps(sums, 1));
                    r += 2;
                }
                if r < rows {
                    let h0 = h.add(r * dim);
                    let mut a0 = [_mm256_setzero_ps(); V_BLOCK];
                    for d in (0..dim).step_by(8) {
                        let x0 = _mm256_loadu_ps(h0.add(d));
                        for j in 0..V_BLOCK {
                            a0[j] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(wv[j].add(d)), a0[j]);
                        }
                    }
                    let sums = reduce8(a0, a0);
                    _mm_storeu_ps(out.at(r * vocab + v), _mm256_castps256_ps128(sums));
                }
                v += V_BLOCK;
            }
            // fewer than V_BLOCK columns left at the end of the range
            portable(p, v..cols.end);
        }

        /// Horizontal sums of eight accumulators: `[Σa[0], …, Σa[3], Σb[0], …, Σb[3]]`.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn reduce8(a: [__m256; 4], b: [__m256; 4]) -> __m256 {
            let ua = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
            let ub = _mm256_hadd_ps(_mm256_hadd_ps(b[0], b[1]), _mm256_hadd_ps(b[2], b[3]));
            // ua = [a0 a1 a2 a3 (low lanes) | a0 a1 a2 a3 (high lanes)], likewise ub
            _mm256_add_ps(
                _mm256_permute2f128_ps(ua, ub, 0x20),
                _mm256_permute2f128_ps(ua, ub, 0x31),
            )
        }
    }
}

/// Runs a closure once per thread of a team: `f(part, parts)`.
mod team {
    use std::ffi::{c_int, c_uint, c_void, CStr};
    use std::sync::OnceLock;

    type Job<'a> = &'a (dyn Fn(usize, usize) + Sync);

    /// The OpenMP runtime's entry points, looked up in the libraries already loaded.
    struct OpenMp {
        parallel: unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint),
        thread_num: unsafe extern "C" fn() -> c_int,
        num_threads: unsafe extern "C" fn() -> c_int,
    }

    fn openmp() -> Option<&'static OpenMp> {
        static OPENMP: OnceLock<Option<OpenMp>> = OnceLock::new();
        OPENMP
            .get_or_init(|| {
                let find = |name: &CStr| {
                    // SAFETY: dlsym with a NUL-terminated name; a null result is handled.
                    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                    (!p.is_null()).then_some(p)
                };
                let (parallel, thread_num, num_threads) = (
                    find(c"GOMP_parallel")?,
                    find(c"omp_get_thread_num")?,
                    find(c"omp_get_num_threads")?,
                );
                // SAFETY: these are the OpenMP runtime ABI's signatures for these symbols.
                unsafe {
                    Some(OpenMp {
                        parallel: std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn(
                                extern "C" fn(*mut c_void),
                                *mut c_void,
                                c_uint,
                                c_uint,
                            ),
                        >(parallel),
                        thread_num: std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn() -> c_int,
                        >(thread_num),
                        num_threads: std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn() -> c_int,
                        >(num_threads),
                    })
                }
            })
            .as_ref()
    }

    /// `f(part, parts)` for every `part < parts`, on up to `threads` threads: the OpenMP team
    /// when the runtime is loaded, else the calling thread alone (`parts = 1`).
    pub fn run(threads: usize, f: Job<'_>) {
        let Some(omp) = openmp().filter(|_| threads > 1) else {
            return f(0, 1);
        };
        struct Ctx<'a> {
            omp: &'static OpenMp,
            f: Job<'a>,
        }
        extern "C" fn body(data: *mut c_void) {
            // SAFETY: `data` is the `Ctx` below, alive until `GOMP_parallel` returns.
            let ctx = unsafe { &*(data as *const Ctx) };
            // SAFETY: OpenMP queries, valid inside a parallel region.
            let (part, parts) = unsafe { ((ctx.omp.thread_num)(), (ctx.omp.num_threads)()) };
            (ctx.f)(part.max(0) as usize, parts.max(1) as usize);
        }
        let ctx = Ctx { omp, f };
        // SAFETY: `GOMP_parallel` runs `body(data)` on every thread of a new team and returns
        // when all have finished, so `ctx` outlives every use.
        unsafe {
            (omp.parallel)(
                body,
                &ctx as *const Ctx as *mut c_void,
                threads as c_uint,
                0,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (no RNG crate needed).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn reference(hidden: &[f32], rows: usize, weight: &[f32], dim: usize) -> Vec<f64> {
        let vocab = weight.len() / dim;
        let mut out = vec![0f64; rows * vocab];
        for r in 0..rows {
            for v in 0..vocab {
                out[r * vocab + v] = (0..dim)
                    .map(|d| hidden[r * dim + d] as f64 * weight[v * dim + d] as f64)
                    .sum();
            }
        }
        out
    }

    #[test]
    fn matches_a_double_precision_product_for_every_shape_and_thread_count() {
        // odd and even row counts, dims on and off the 8-wide SIMD path, vocabularies with and
        // without a ragged last block, one to three threads
        let shapes = [
            (1, 64, 9001),
            (8, 64, 4097),
            (3, 16, 10),
            (11, 67, 5000),
            (16, 5, 33),
        ];
        for &(rows, dim, vocab) in &shapes {
            let hidden = values(rows * dim, rows as u64);
            let weight = values(vocab * dim, dim as u64);
            let want = reference(&hidden, rows, &weight, dim);
            for threads in 1..=3 {
                let mut out = vec![f32::NAN; rows * vocab];
                matmul_transposed(&hidden, rows, &weight, dim, &mut out, threads);
                for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (got as f64 - want).abs() < 1e-5,
                        "rows {rows} dim {dim} threads {threads}: element {i}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_nan_like_torch() {
        let nan = f32::NAN;
        let rows: [&[f32]; 5] = [
            &[1.0, 3.0, 3.0, 2.0],
            &[f32::NEG_INFINITY; 4],
            &[0.0, nan, 5.0, nan],
            &[-2.0, -1.0, f32::INFINITY, -3.0],
            &[7.0, 1.0, 2.0, 7.0],
        ];
        let flat: Vec<f32> = rows.concat();
        for threads in 1..=3 {
            assert_eq!(argmax_rows(&flat, 5, threads), [1, 0, 1, 2, 0]);
        }
    }
}
