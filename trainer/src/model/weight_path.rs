//! The checkpoint key tree, written once: modules are built by asking a [`WeightPath`] for their
//! tensors by leaf name (`path.pp("self_attn").pp("q_proj").get("weight", shape)`), as candle's
//! `VarBuilder::pp` does, and every tensor handed out is recorded under its full key.
//!
//! The same construction code therefore gives the model its weights, its named-tensor listing
//! (what checkpoints are saved from) and, run over shape-only placeholders, the list of tensors a
//! checkpoint of a config must hold: the three cannot disagree on a key or on the order.

use std::cell::RefCell;
use std::fmt::Display;

use tch::{Device, Kind, Tensor};

use super::weights::Weights;
use super::ModelError;

/// Where a [`WeightPath`] takes its tensors from.
#[derive(Debug, Clone, Copy)]
pub enum TensorSource<'a> {
    /// Loaded weights, each checked against the shape its module asks for.
    Weights(&'a Weights),
    /// A one-element zero tensor of this kind expanded (stride 0) to the shape asked for: the
    /// key and shape listing of a config without allocating its weights.
    Placeholders(Kind),
}

/// A zero tensor of `shape` that allocates one element (every stride 0).
pub fn placeholder(kind: Kind, shape: &[i64]) -> Tensor {
    let ones = vec![1i64; shape.len()];
    Tensor::zeros([1], (kind, Device::Cpu))
        .view(ones.as_slice())
        .expand(shape, false)
}

/// Builds one model from a [`TensorSource`] and keeps the `(key, tensor)` pairs its modules took.
#[derive(Debug)]
pub struct WeightBuilder<'a> {
    source: TensorSource<'a>,
    taken: RefCell<Vec<(String, Tensor)>>,
}

impl<'a> WeightBuilder<'a> {
    /// A builder reading from `source`.
    pub fn new(source: TensorSource<'a>) -> Self {
        WeightBuilder {
            source,
            taken: RefCell::new(Vec::new()),
        }
    }

    /// The root of the key tree (empty prefix).
    pub fn root(&self) -> WeightPath<'_> {
        WeightPath {
            prefix: String::new(),
            builder: self,
        }
    }

    /// Every tensor taken, under its full key, in the order the modules took them.
    pub fn into_named(self) -> Vec<(String, Tensor)> {
        self.taken.into_inner()
    }
}

/// A node of the checkpoint key tree (`model.layers.3.mlp`).
#[derive(Debug, Clone)]
pub struct WeightPath<'b> {
    prefix: String,
    builder: &'b WeightBuilder<'b>,
}

impl<'b> WeightPath<'b> {
    /// The child node `segment` (`model` → `model.layers`, `model.layers` → `model.layers.0`).
    pub fn pp(&self, segment: impl Display) -> WeightPath<'b> {
        WeightPath {
            prefix: self.key(segment),
            builder: self.builder,
        }
    }

    /// The full key of `leaf` under this node.
    pub fn key(&self, leaf: impl Display) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// The tensor `leaf` of this node with `shape`, recorded under its full key.
    pub fn get(&self, leaf: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let key = self.key(leaf);
        let t = match self.builder.source {
            TensorSource::Weights(w) => w.get(&key, shape)?,
            TensorSource::Placeholders(kind) => placeholder(kind, shape),
        };
        self.builder
            .taken
            .borrow_mut()
            .push((key, t.shallow_clone()));
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_segments_and_every_get_is_recorded_in_order() {
        let builder = WeightBuilder::new(TensorSource::Placeholders(Kind::Float));
        let root = builder.root();
        let layer = root.pp("model").pp("layers").pp(3);
        assert_eq!(layer.key("mlp"), "model.layers.3.mlp");
        let w = layer.pp("mlp").get("weight", &[4, 2]).unwrap();
        assert_eq!(w.size(), [4, 2]);
        let _head = root.pp("lm_head").get("weight", &[5]).unwrap();
        drop((root, layer));
        let named: Vec<(String, Vec<i64>)> = builder
            .into_named()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        assert_eq!(
            named,
            [
                ("model.layers.3.mlp.weight".to_string(), vec![4, 2]),
                ("lm_head.weight".to_string(), vec![5]),
            ]
        );
    }

    #[test]
    fn loaded_weights_are_checked_against_the_shape_asked_for() {
        let map = [(
            "a.b".to_string(),
            Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
        )];
        let weights = Weights::from_map(map.into_iter().collect());
        let builder = WeightBuilder::new(TensorSource::Weights(&weights));
        let a = builder.root().pp("a");
        assert_eq!(a.get("b", &[2, 3]).unwrap().size(), [2, 3]);
        assert!(matches!(
            a.get("b", &[3, 2]),
            Err(ModelError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            a.get("c", &[1]),
            Err(ModelError::MissingTensors(_))
        ));
    }
}
