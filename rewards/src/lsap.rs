//! Rectangular linear sum assignment with scipy's `linear_sum_assignment` behaviour.
//!
//! Among equally cheap assignments the reference keeps whichever scipy's shortest-augmenting-path
//! solver (Crouse 2016) finds first, and the spatial score depends on which one that is, so this
//! follows the same algorithm step by step: same column scan order, same tie rule, same transpose
//! of tall matrices, same rejection of NaN / −inf entries and of infeasible matrices.

/// Why scipy would raise `ValueError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LsapError {
    /// A NaN or −inf entry.
    #[error("matrix contains invalid numeric entries")]
    Invalid,
    /// No assignment of finite cost exists.
    #[error("cost matrix is infeasible")]
    Infeasible,
}

/// Solve the min-cost assignment for the row-major `nr × nc` matrix `cost`. Returns, for every row,
/// the column it is assigned to (`None` for the rows left out when `nr > nc`).
pub fn linear_sum_assignment(
    nr: usize,
    nc: usize,
    cost: &[f64],
) -> Result<Vec<Option<usize>>, LsapError> {
    let mut out = vec![None; nr];
    linear_sum_assignment_into(nr, nc, cost, &mut out)?;
    Ok(out)
}

/// [`linear_sum_assignment`] writing each row's column into `out` (length `nr`), so a caller
/// scoring many matrices allocates nothing.
pub fn linear_sum_assignment_into(
    nr: usize,
    nc: usize,
    cost: &[f64],
    out: &mut [Option<usize>],
) -> Result<(), LsapError> {
    assert_eq!(cost.len(), nr * nc, "cost matrix is not {nr} x {nc}");
    assert_eq!(out.len(), nr, "one output slot per row");
    out.fill(None);
    if nr == 0 || nc == 0 {
        return Ok(());
    }
    if cost.iter().any(|c| c.is_nan() || *c == f64::NEG_INFINITY) {
        return Err(LsapError::Invalid);
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => assign(nr, nc, cost, &mut scratch, out),
        Err(_) => assign(nr, nc, cost, &mut Scratch::default(), out),
    })
}

/// Working memory of the solver, kept per thread so a reward costs no allocation here.
#[derive(Debug, Default)]
struct Scratch {
    transposed: Vec<f64>,
    floats: Vec<f64>,
    indices: Vec<usize>,
    flags: Vec<bool>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// [`linear_sum_assignment`] for a non-empty matrix without NaN / −inf.
fn assign(
    nr: usize,
    nc: usize,
    cost: &[f64],
    scratch: &mut Scratch,
    out: &mut [Option<usize>],
) -> Result<(), LsapError> {
    if nc < nr {
        let mut t = std::mem::take(&mut scratch.transposed);
        t.clear();
        t.resize(nr * nc, 0.0);
        for i in 0..nr {
            for j in 0..nc {
                t[j * nr + i] = cost[i * nc + j];
            }
        }
        // col4row[gt] = pred
        let solved = solve(nc, nr, &t, scratch).map(|col4row| {
            for (j, &i) in col4row.iter().enumerate() {
                out[i] = Some(j);
            }
        });
        scratch.transposed = t;
        return solved;
    }
    for (slot, &j) in out.iter_mut().zip(solve(nr, nc, cost, scratch)?) {
        *slot = Some(j);
    }
    Ok(())
}

/// scipy's `solve` for `nr <= nc`; returns `col4row` (borrowed from `scratch`).
fn solve<'s>(
    nr: usize,
    nc: usize,
    cost: &[f64],
    scratch: &'s mut Scratch,
) -> Result<&'s [usize], LsapError> {
    const NONE: usize = usize::MAX;
    let Scratch {
        floats,
        indices,
        flags,
        ..
    } = scratch;
    floats.clear();
    floats.resize(nr + nc, 0.0);
    floats.resize(nr + 2 * nc, f64::INFINITY);
    let (u, rest) = floats.split_at_mut(nr);
    let (v, shortest) = rest.split_at_mut(nc);
    indices.clear();
    indices.resize(nr + 3 * nc, NONE);
    let (col4row, rest) = indices.split_at_mut(nr);
    let (path, rest) = rest.split_at_mut(nc);
    let (row4col, remaining) = rest.split_at_mut(nc);
    flags.clear();
    flags.resize(nr + nc, false);
    let (sr, sc) = flags.split_at_mut(nr);

    for cur_row in 0..nr {
        // Shortest augmenting path from cur_row.
        let mut min_val = 0.0f64;
        let mut num_remaining = nc;
        for (it, r) in remaining.iter_mut().enumerate() {
            *r = nc - it - 1;
        }
        sr.fill(false);
        sc.fill(false);
        shortest.fill(f64::INFINITY);
        let mut i = cur_row;
        let sink = loop {
            let mut index = NONE;
            let mut lowest = f64::INFINITY;
            sr[i] = true;
            for (it, &j) in remaining[..num_remaining].iter().enumerate() {
                let r = min_val + cost[i * nc + j] - u[i] - v[j];
                if r < shortest[j] {
                    path[j] = i;
                    shortest[j] = r;
                }
                if shortest[j] < lowest || (shortest[j] == lowest && row4col[j] == NONE) {
                    lowest = shortest[j];
                    index = it;
                }
            }
            min_val = lowest;
            if min_val == f64::INFINITY || index == NONE {
                return Err(LsapError::Infeasible);
            }
            let j = remaining[index];
            sc[j] = true;
            num_remaining -= 1;
            remaining[index] = remaining[num_remaining];
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };

        // Update the dual variables.
        u[cur_row] += min_val;
        for r in 0..nr {
            if sr[r] && r != cur_row {
                u[r] += min_val - shortest[col4row[r]];
            }
        }
        for j in 0..nc {
            if sc[j] {
                v[j] -= min_val - shortest[j];
            }
        }

        // Augment the previous solution.
        let mut j = sink;
        loop {
            let r = path[j];
            row4col[j] = r;
            std::mem::swap(&mut col4row[r], &mut j);
            if r == cur_row {
                break;
            }
        }
    }
    Ok(col4row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_matrix_gives_identity() {
        // scipy: linear_sum_assignment(np.ones((3, 3))) -> rows [0 1 2], cols [0 1 2]
        assert_eq!(
            linear_sum_assignment(3, 3, &[1.0; 9]).unwrap(),
            vec![Some(0), Some(1), Some(2)]
        );
        // tall: np.ones((3, 2)) -> rows [0 1], cols [0 1]
        assert_eq!(
            linear_sum_assignment(3, 2, &[1.0; 6]).unwrap(),
            vec![Some(0), Some(1), None]
        );
    }

    #[test]
    fn optimal_and_errors() {
        // [[4,1,3],[2,0,5],[3,2,2]]: optimum 5 = (0,1),(1,0),(2,2) (scipy docs example)
        let c = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        assert_eq!(
            linear_sum_assignment(3, 3, &c).unwrap(),
            vec![Some(1), Some(0), Some(2)]
        );
        assert_eq!(
            linear_sum_assignment(2, 1, &[f64::NAN, 0.0]),
            Err(LsapError::Invalid)
        );
        assert_eq!(
            linear_sum_assignment(1, 1, &[f64::NEG_INFINITY]),
            Err(LsapError::Invalid)
        );
        assert_eq!(
            linear_sum_assignment(1, 1, &[f64::INFINITY]),
            Err(LsapError::Infeasible)
        );
        assert_eq!(
            linear_sum_assignment(2, 1, &[f64::INFINITY, 3.0]).unwrap(),
            vec![None, Some(0)]
        );
        assert_eq!(
            linear_sum_assignment(3, 0, &[]).unwrap(),
            vec![None, None, None]
        );
    }
}
