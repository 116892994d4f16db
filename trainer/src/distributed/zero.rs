//! ZeRO-1 over a flat view of the parameters (docs/distributed.md, "Sharded optimizer"): the
//! parameters, in the optimizer's order, are laid end to end as one flat space of `total`
//! elements, cut into `world` equal shards of `ceil(total / world)` elements; rank `r` keeps the
//! optimizer state of shard `r` only, updates those elements, and the updated shards are then
//! all-gathered. Gradients are summed over ranks in f32 buckets before the norm, so the clip and
//! the non-finite skip see the global gradient on every rank.

use std::ops::Range;

use tch::{Kind, Tensor};

use super::process_group::{ProcessGroup, ReduceOp};
use super::Result;

/// The flat layout of a parameter list over `world` ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatLayout {
    /// First flat element of each parameter.
    offsets: Vec<i64>,
    /// Elements of each parameter.
    numels: Vec<i64>,
    /// All elements.
    total: i64,
    /// Elements per shard (the last may be shorter, or empty).
    shard_len: i64,
    world: usize,
}

/// A run of consecutive flat elements inside one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Parameter index.
    pub param: usize,
    /// First element within the parameter.
    pub start: i64,
    /// Elements.
    pub len: i64,
}

impl FlatLayout {
    /// The layout of parameters with these element counts over `world` ranks.
    pub fn new(numels: &[i64], world: usize) -> Self {
        let mut offsets = Vec::with_capacity(numels.len());
        let mut total = 0;
        for &n in numels {
            offsets.push(total);
            total += n;
        }
        let world = world.max(1);
        FlatLayout {
            offsets,
            numels: numels.to_vec(),
            total,
            shard_len: (total + world as i64 - 1) / world as i64,
            world,
        }
    }

    /// The layout of `params` (their element counts).
    pub fn of(params: &[(String, Tensor)], world: usize) -> Self {
        let numels: Vec<i64> = params.iter().map(|(_, p)| p.numel() as i64).collect();
        Self::new(&numels, world)
    }

    /// Elements in all.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Elements per shard.
    pub fn shard_len(&self) -> i64 {
        self.shard_len
    }

    /// The flat elements of rank `rank`'s shard.
    pub fn shard(&self, rank: usize) -> Range<i64> {
        let start = (rank as i64 * self.shard_len).min(self.total);
        start..(start + self.shard_len).min(self.total)
    }

    /// For each parameter, the range of its own elements (flattened) inside rank `rank`'s shard;
    /// empty when the shard does not reach it.
    pub fn owned(&self, rank: usize) -> Vec<Range<i64>> {
        let shard = self.shard(rank);
        self.offsets
            .iter()
            .zip(&self.numels)
            .map(|(&off, &n)| {
                let a = shard.start.clamp(off, off + n) - off;
                let b = shard.end.clamp(off, off + n) - off;
                a..b
            })
            .collect()
    }

    /// The parameter segments covering flat elements `range`, in order.
    pub fn segments(&self, range: Range<i64>) -> Vec<Segment> {
        let mut out = Vec::new();
        let first = self
            .offsets
            .partition_point(|&o| o <= range.start)
            .saturating_sub(1);
        for p in first..self.offsets.len() {
            let (off, n) = (self.offsets[p], self.numels[p]);
            if off >= range.end {
                break;
            }
            let a = range.start.max(off);
            let b = range.end.min(off + n);
            if b > a {
                out.push(Segment {
                    param: p,
                    start: a - off,
                    len: b - a,
                });
            }
        }
        out
    }
}

/// Elements of an f32 bucket of `bytes`.
pub fn bucket_elements(bytes: usize) -> i64 {
    (bytes / 4).max(1) as i64
}

/// The flattened view of `t`'s elements `seg`.
fn flat_view(t: &Tensor, seg: &Segment) -> Result<Tensor> {
    Ok(t.f_view([-1])?.f_narrow(0, seg.start, seg.len)?)
}

/// Sums every parameter's gradient over all ranks, in f32 buckets of `bucket` elements (a
/// gradient larger than a bucket is split across several): each bucket is packed, all-reduced
/// and unpacked into the gradients, rounded once to their dtype. A parameter without a gradient
/// takes part as zeros, so every rank issues the same collectives.
pub fn all_reduce_gradients(
    group: &ProcessGroup,
    params: &[(String, Tensor)],
    bucket: i64,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let layout = FlatLayout::of(params, 1);
    let Some(device) = params.first().map(|(_, p)| p.device()) else {
        return Ok(());
    };
    let mut start = 0;
    while start < layout.total() {
        let end = (start + bucket).min(layout.total());
        let segments = layout.segments(start..end);
        let mut parts = Vec::with_capacity(segments.len());
        for seg in &segments {
            let g = params[seg.param].1.grad();
            parts.push(
                if g.defined() && g.numel() as i64 == layout.numels[seg.param] {
                    flat_view(&g, seg)?.f_to_kind(Kind::Float)?
                } else {
                    Tensor::f_zeros([seg.len], (Kind::Float, device))?
                },
            );
        }
        let mut flat = Tensor::f_cat(&parts, 0)?;
        drop(parts);
        group.all_reduce(&mut flat, ReduceOp::Sum)?;
        let mut at = 0;
        for seg in &segments {
            let g = params[seg.param].1.grad();
            if g.defined() && g.numel() as i64 == layout.numels[seg.param] {
                flat_view(&g, seg)?.f_copy_(&flat.f_narrow(0, at, seg.len)?)?;
            }
            at += seg.len;
        }
        start = end;
    }
    Ok(())
}

/// After each rank updated the elements of its shard: every rank receives every shard, in
/// buckets of `bucket` elements per rank (f32 on the wire, exact for bf16/f16/f32 weights).
pub fn all_gather_parameters(
    group: &ProcessGroup,
    params: &[(String, Tensor)],
    bucket: i64,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let world = group.world();
    let layout = FlatLayout::of(params, world);
    let Some(device) = params.first().map(|(_, p)| p.device()) else {
        return Ok(());
    };
    let own = layout.shard(group.rank());
    let mut k = 0;
    while k < layout.shard_len() {
        let len = bucket.min(layout.shard_len() - k);
        // this rank's piece, zero-padded past the end of its shard
        let mine = (own.start + k).min(own.end)..(own.start + k + len).min(own.end);
        let mut parts = Vec::new();
        for seg in layout.segments(mine.clone()) {
            parts.push(flat_view(&params[seg.param].1, &seg)?.f_to_kind(Kind::Float)?);
        }
        let pad = len - (mine.end - mine.start);
        if pad > 0 {
            parts.push(Tensor::f_zeros([pad], (Kind::Float, device))?);
        }
        let input = Tensor::f_cat(&parts, 0)?;
        let mut output = Tensor::f_empty([world as i64 * len], (Kind::Float, device))?;
        group.all_gather(&mut output, &input)?;
        for rank in (0..world).filter(|&r| r != group.rank()) {
            let shard = layout.shard(rank);
            let piece = (shard.start + k).min(shard.end)..(shard.start + k + len).min(shard.end);
            let mut at = rank as i64 * len;
            for seg in layout.segments(piece) {
                let mut dst = flat_view(&params[seg.param].1, &seg)?;
                dst.f_copy_(&output.f_narrow(0, at, seg.len)?)?;
                at += seg.len;
            }
        }
        k += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_element_once() {
        let layout = FlatLayout::new(&[10, 3, 0, 7], 3);
        assert_eq!(layout.total(), 20);
        assert_eq!(layout.shard_len(), 7);
        assert_eq!(
            (0..3).map(|r| layout.shard(r)).collect::<Vec<_>>(),
            vec![0..7, 7..14, 14..20]
        );
        assert_eq!(layout.owned(0), vec![0..7, 0..0, 0..0, 0..0]);
        assert_eq!(layout.owned(1), vec![7..10, 0..3, 0..0, 0..1]);
        assert_eq!(layout.owned(2), vec![10..10, 3..3, 0..0, 1..7]);
        assert_eq!(
            layout.segments(8..15),
            vec![
                Segment {
                    param: 0,
                    start: 8,
                    len: 2
                },
                Segment {
                    param: 1,
                    start: 0,
                    len: 3
                },
                Segment {
                    param: 3,
                    start: 0,
                    len: 2
                },
            ]
        );
        // more ranks than elements: the trailing shards are empty
        let tiny = FlatLayout::new(&[2], 4);
        assert_eq!(tiny.shard(3), 2..2);
        assert_eq!(tiny.owned(3), vec![2..2]);
    }
}
