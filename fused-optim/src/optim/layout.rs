//! The packed layout of a parameter set: many named tensors in one params buffer, one grads
//! buffer and one buffer per state, each tensor at a fixed, aligned offset.

use std::collections::HashMap;
use std::ops::Range;

use super::TensorRef;
use crate::error::{Error, Result};

/// Every tensor starts at a multiple of this many elements: one 8-bit state block, so no block
/// spans two tensors, and at least WebGPU's largest `min_storage_buffer_offset_alignment`
/// (256 bytes) in every format (f32, 16-bit pairs, 8-bit codes), so a trainer can bind any
/// tensor as a slice of the packed buffers on any adapter, and the layout depends neither on
/// the adapter nor on the formats.
pub const TENSOR_ALIGNMENT: u64 = 256;

/// Where one tensor lives in the packed buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSlot {
    /// The tensor's name, unique in its layout.
    pub name: String,
    /// First element, a multiple of [`TENSOR_ALIGNMENT`].
    pub offset: u64,
    /// Its element count, padding excluded.
    pub len: u64,
    /// Index of its parameter group.
    pub group: usize,
}

impl TensorSlot {
    /// Its elements in the packed buffers.
    pub fn range(&self) -> Range<usize> {
        self.offset as usize..(self.offset + self.len) as usize
    }

    /// Its slice of a packed f32 buffer, e.g. to bind a layer's weights.
    pub fn binding<'a>(&self, buffer: &'a wgpu::Buffer) -> wgpu::BufferBinding<'a> {
        self.binding_as(buffer, crate::format::Dtype::F32)
    }

    /// Its slice of a packed buffer in `dtype` (whole u32 words for 16-bit formats).
    pub fn binding_as<'a>(
        &self,
        buffer: &'a wgpu::Buffer,
        dtype: crate::format::Dtype,
    ) -> wgpu::BufferBinding<'a> {
        wgpu::BufferBinding {
            buffer,
            offset: self.offset * dtype.element_bytes(),
            size: wgpu::BufferSize::new(dtype.buffer_bytes(self.len)),
        }
    }
}

/// `x` rounded up to a multiple of `m`, saturating (see the absurd lengths in `ParamLayout::new`).
fn round_up(x: u64, m: u64) -> u64 {
    x.checked_next_multiple_of(m).unwrap_or(u64::MAX)
}

/// Named tensors packed group by group: each group's tensors in registration order, each at
/// the next multiple of [`TENSOR_ALIGNMENT`], so every group is one contiguous run of elements
/// and a step needs one dispatch per group and window, however many tensors there are. The
/// same tensors and groups always give the same offsets, so checkpoints can name tensors.
///
/// Each group's run ends on a whole vec4 (padded by up to 3 elements), so a step over a group
/// is vector dispatches only, with no scalar tail. The padding between and after tensors is
/// updated along with its group; it stays zero as long as its grads do, which they are unless
/// something writes there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    /// In layout order (group by group).
    tensors: Vec<TensorSlot>,
    by_name: HashMap<String, usize>,
    groups: Vec<Range<u64>>,
    len: u64,
}

impl ParamLayout {
    /// Packs `tensors` (name, element count) into `groups`, each a list of tensor names. Every
    /// tensor must have a unique name, at least one element, and belong to exactly one group.
    pub fn new<T: AsRef<str>, G: AsRef<str>>(
        tensors: &[(T, usize)],
        groups: &[Vec<G>],
    ) -> Result<Self> {
        if tensors.is_empty() {
            return Err(Error::EmptyParams);
        }
        // Each tensor's group, once a group names it.
        let mut registered: HashMap<&str, Option<usize>> = HashMap::new();
        for (name, len) in tensors {
            let name = name.as_ref();
            if *len == 0 {
                return Err(Error::EmptyTensor { name: name.into() });
            }
            if registered.insert(name, None).is_some() {
                return Err(Error::DuplicateTensor { name: name.into() });
            }
        }
        for (group, names) in groups.iter().enumerate() {
            if names.is_empty() {
                return Err(Error::EmptyGroup { group });
            }
            for name in names {
                let name = name.as_ref();
                let owner = registered
                    .get_mut(name)
                    .ok_or_else(|| Error::UnknownTensor { name: name.into() })?;
                if let Some(first) = owner.replace(group) {
                    return Err(Error::TensorInTwoGroups {
                        name: name.into(),
                        first,
                        second: group,
                    });
                }
            }
        }
        let owners = tensors
            .iter()
            .map(|(name, _)| {
                let name = name.as_ref();
                registered[name].ok_or_else(|| Error::UngroupedTensor { name: name.into() })
            })
            .collect::<Result<Vec<usize>>>()?;
        let mut layout = Self {
            tensors: Vec::with_capacity(tensors.len()),
            by_name: HashMap::with_capacity(tensors.len()),
            groups: Vec::with_capacity(groups.len()),
            len: 0,
        };
        for group in 0..groups.len() {
            let start = round_up(layout.len, TENSOR_ALIGNMENT);
            let mut end = start;
            for ((name, len), _) in tensors.iter().zip(&owners).filter(|(_, &g)| g == group) {
                let offset = round_up(end, TENSOR_ALIGNMENT);
                // Saturating: an absurd length makes an absurd layout, which the optimizer
                // then refuses as too large, rather than an overflow.
                end = offset.saturating_add(*len as u64);
                layout
                    .by_name
                    .insert(name.as_ref().to_owned(), layout.tensors.len());
                layout.tensors.push(TensorSlot {
                    name: name.as_ref().to_owned(),
                    offset,
                    len: *len as u64,
                    group,
                });
            }
            let end = round_up(end, 4);
            layout.groups.push(start..end);
            layout.len = end;
        }
        Ok(layout)
    }

    /// Elements of each packed buffer, padding included.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the packed buffers have no elements (never, for a layout `new` built).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of each packed buffer.
    pub fn bytes(&self) -> u64 {
        self.len * 4
    }

    /// Every tensor, in layout order (group by group, registration order within a group).
    pub fn tensors(&self) -> &[TensorSlot] {
        &self.tensors
    }

    /// The slot of the tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorSlot> {
        self.by_name
            .get(name)
            .map(|&index| &self.tensors[index])
            .ok_or_else(|| Error::UnknownTensor { name: name.into() })
    }

    /// The slot of a tensor by name, or by index in layout order.
    pub(crate) fn find(&self, tensor: TensorRef) -> Result<&TensorSlot> {
        match tensor {
            TensorRef::Name(name) => self.tensor(name),
            TensorRef::Index(index) => {
                let count = self.tensors.len();
                self.tensors.get(index).ok_or_else(|| Error::UnknownTensor {
                    name: format!("#{index} (this set has {count})"),
                })
            }
        }
    }

    /// The number of parameter groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The elements group `group` spans: its first tensor's start to its last tensor's end.
    pub fn group_range(&self, group: usize) -> Range<u64> {
        self.groups[group].clone()
    }

    /// Elements of each of `n` shards ([`Self::shards`]): `len() / n` rounded up to a
    /// multiple of [`TENSOR_ALIGNMENT`]. A collective that wants equal blocks (MPI's
    /// `reduce_scatter_block`) works on buffers of `n * shard_len(n)` elements, zero past
    /// `len()`.
    pub fn shard_len(&self, n: usize) -> u64 {
        round_up(self.len.div_ceil(n.max(1) as u64), TENSOR_ALIGNMENT)
    }

    /// The packed elements cut into `n` contiguous shards, as a data-parallel job gives each
    /// of its `n` ranks one (ZeRO's flat partition): shard `k` is
    /// `k * shard_len(n)..(k + 1) * shard_len(n)`, the last ending at `len()`. Shards cut
    /// tensors and groups wherever the sizes fall, on multiples of [`TENSOR_ALIGNMENT`] (so
    /// on block boundaries of every format). More shards than such pieces is an error.
    pub fn shards(&self, n: usize) -> Result<Vec<Range<u64>>> {
        let size = self.shard_len(n);
        let shards: Vec<Range<u64>> = (0..n as u64)
            .map(|k| (k * size).min(self.len)..((k + 1) * size).min(self.len))
            .collect();
        let empty = match n {
            0 => Some(0..0),
            _ => shards.iter().find(|shard| shard.is_empty()).cloned(),
        };
        match empty {
            Some(empty) => Err(Error::InvalidShard {
                start: empty.start,
                end: empty.end,
                len: self.len,
                reason: format!(
                    "{n} shards of whole {TENSOR_ALIGNMENT}-element pieces leave one empty"
                ),
            }),
            None => Ok(shards),
        }
    }

    /// `range` if it is a shard of this layout: non-empty, within it, and starting and ending
    /// on multiples of [`TENSOR_ALIGNMENT`] (or at its end).
    pub(crate) fn check_shard(&self, range: Range<u64>) -> Result<Range<u64>> {
        let bad = |reason: &str| Error::InvalidShard {
            start: range.start,
            end: range.end,
            len: self.len,
            reason: reason.into(),
        };
        if range.start >= range.end || range.end > self.len {
            return Err(bad("it must be non-empty and within the layout"));
        }
        let aligned = |at: u64| at.is_multiple_of(TENSOR_ALIGNMENT);
        if !aligned(range.start) || !(aligned(range.end) || range.end == self.len) {
            return Err(bad(&format!(
                "its ends must be multiples of {TENSOR_ALIGNMENT} elements (or the layout's end)"
            )));
        }
        Ok(range)
    }

    /// One tensor's values in a packed host copy of a buffer (`len()` elements).
    pub fn view<'a>(&self, packed: &'a [f32], name: &str) -> Result<&'a [f32]> {
        self.check_packed(packed.len())?;
        Ok(&packed[self.tensor(name)?.range()])
    }

    /// One tensor's values in a packed host copy of a buffer, to fill it.
    pub fn view_mut<'a>(&self, packed: &'a mut [f32], name: &str) -> Result<&'a mut [f32]> {
        self.check_packed(packed.len())?;
        Ok(&mut packed[self.tensor(name)?.range()])
    }

    fn check_packed(&self, len: usize) -> Result<()> {
        match len as u64 == self.len {
            true => Ok(()),
            false => Err(Error::StateMismatch {
                tensor: "packed host copy".into(),
                expected: self.len,
                got: len as u64,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_pack_group_by_group_at_aligned_offsets() {
        let tensors = [("w1", 100), ("b1", 3), ("w2", 64), ("b2", 1)];
        let layout = ParamLayout::new(&tensors, &[vec!["w2", "w1"], vec!["b1", "b2"]]).unwrap();
        let slots: Vec<(&str, u64, u64, usize)> = layout
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.offset, t.len, t.group))
            .collect();
        assert_eq!(
            slots,
            [
                ("w1", 0, 100, 0),
                ("w2", 256, 64, 0),
                ("b1", 512, 3, 1),
                ("b2", 768, 1, 1)
            ]
        );
        assert_eq!(layout.group_range(0), 0..320);
        // Each group's run ends on a whole vec4: b2 ends at 769, its group at 772.
        assert_eq!(layout.group_range(1), 512..772);
        assert_eq!(layout.len(), 772);
        assert_eq!(layout.tensor("b1").unwrap().range(), 512..515);
    }

    #[test]
    fn bad_registrations_are_refused() {
        type Tensors = Vec<(&'static str, usize)>;
        let t = |names: &[(&'static str, usize)]| names.to_vec();
        let cases: [(Tensors, Vec<Vec<&str>>, &str); 6] = [
            (t(&[("a", 1), ("a", 2)]), vec![vec!["a"]], "DuplicateTensor"),
            (
                t(&[("a", 1), ("b", 0)]),
                vec![vec!["a", "b"]],
                "EmptyTensor",
            ),
            (t(&[("a", 1)]), vec![vec!["a", "c"]], "UnknownTensor"),
            (
                t(&[("a", 1), ("b", 1)]),
                vec![vec!["a", "b"], vec!["b"]],
                "TensorInTwoGroups",
            ),
            (t(&[("a", 1), ("b", 1)]), vec![vec!["a"]], "UngroupedTensor"),
            (t(&[("a", 1)]), vec![vec!["a"], vec![]], "EmptyGroup"),
        ];
        for (tensors, groups, expected) in cases {
            let error = ParamLayout::new(&tensors, &groups).unwrap_err();
            assert!(format!("{error:?}").starts_with(expected), "{error:?}");
        }
        let none: [(&str, usize); 0] = [];
        let error = ParamLayout::new(&none, &[Vec::<&str>::new()]).unwrap_err();
        assert!(matches!(error, Error::EmptyParams), "{error:?}");
    }
}
