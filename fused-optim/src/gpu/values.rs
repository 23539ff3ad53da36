//! Where a step's dispatches read their per-dispatch values: immediates, or the slots of a
//! uniform buffer that each step fills by a copy recorded ahead of its pass.

use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::kernel::{uniform_binding_size, StepValues};
use crate::error::Result;

/// Where the dispatches of one step read their values: immediates, or the slots of a uniform
/// buffer (see [`StepValues`]). Owned by each optimizer (and the unfused chain).
pub(crate) struct ValueSlots {
    /// Bytes of one dispatch's values, and between two dispatches' values in a step's bytes.
    size: u64,
    stride: u64,
    /// The slots, for [`StepValues::UniformCopy`]; none for immediates.
    uniforms: Option<wgpu::Buffer>,
}

impl ValueSlots {
    /// Slots for `dispatches` dispatches of `size` bytes of values each. Allocates (the
    /// uniform) only for [`StepValues::UniformCopy`]; call inside an error scope.
    pub fn new(device: &wgpu::Device, values: StepValues, size: u64, dispatches: usize) -> Self {
        let uniforms = (values == StepValues::UniformCopy).then(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim step values"),
                size: Self::bytes_needed(device, values, size, dispatches),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let stride = match uniforms {
            Some(_) => Self::uniform_stride(device, size),
            None => size,
        };
        Self {
            size,
            stride,
            uniforms,
        }
    }

    /// Bytes the uniform of `dispatches` slots would take with `values` (0 for immediates), to
    /// check against the adapter's limits before allocating anything.
    pub fn bytes_needed(
        device: &wgpu::Device,
        values: StepValues,
        size: u64,
        dispatches: usize,
    ) -> u64 {
        match values {
            StepValues::Immediates => 0,
            StepValues::UniformCopy => {
                Self::uniform_stride(device, size) * dispatches.max(1) as u64
            }
        }
    }

    fn uniform_stride(device: &wgpu::Device, size: u64) -> u64 {
        uniform_binding_size(size)
            .next_multiple_of(device.limits().min_uniform_buffer_offset_alignment as u64)
    }

    /// Bytes of GPU memory allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.uniforms.as_ref().map_or(0, wgpu::Buffer::size)
    }

    /// Binding 0 of every bind group, when the values come in a uniform.
    pub fn binding(&self) -> Option<wgpu::BufferBinding<'_>> {
        self.uniforms.as_ref().map(|buffer| wgpu::BufferBinding {
            buffer,
            offset: 0,
            size: wgpu::BufferSize::new(uniform_binding_size(self.size)),
        })
    }

    /// Lays out one step's values, one entry per dispatch, as [`ValueSlots::stage`] and
    /// [`ValueSlots::set`] read them.
    pub fn layout(&self, values: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (index, value) in values.into_iter().enumerate() {
            debug_assert_eq!(value.len() as u64, self.size);
            bytes.resize(index * self.stride as usize, 0);
            bytes.extend_from_slice(&value);
        }
        bytes
    }

    /// For a uniform, records into `encoder` a copy of `step` (from [`ValueSlots::layout`])
    /// into the slots, from a staging buffer of this step's own, ahead of the step's pass.
    /// Nothing to do for immediates.
    pub fn stage(
        &self,
        context: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        step: &[u8],
    ) -> Result<()> {
        let Some(uniforms) = &self.uniforms else {
            return Ok(());
        };
        let staging = context.scoped("staging the step's values", || {
            context
                .device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("fused-optim staged step values"),
                    contents: step,
                    usage: wgpu::BufferUsages::COPY_SRC,
                })
        })?;
        encoder.copy_buffer_to_buffer(&staging, 0, uniforms, 0, step.len() as u64);
        Ok(())
    }

    /// Sets dispatch `index`'s bind group and values in `pass`.
    pub fn set(
        &self,
        pass: &mut wgpu::ComputePass,
        index: usize,
        group: &wgpu::BindGroup,
        step: &[u8],
    ) {
        let start = index * self.stride as usize;
        match self.uniforms {
            Some(_) => pass.set_bind_group(0, group, &[start as u32]),
            None => {
                pass.set_bind_group(0, group, &[]);
                pass.set_immediates(0, &step[start..start + self.size as usize]);
            }
        }
    }
}
