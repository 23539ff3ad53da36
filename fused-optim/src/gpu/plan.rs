//! How a step is cut into dispatches: every run of elements one rule updates is split into
//! windows that fit the adapter's storage-binding limit, each bound at an aligned offset, and
//! each window into a vector dispatch over its whole vec4s and, where it ends mid-vec4, a
//! scalar dispatch over the rest. Pure arithmetic, shared by every optimizer kind.

/// Elements `start..end` of one target (a caller's params/grads pair and the optimizer's state
/// for it), updated by the rule of parameter group `group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub target: usize,
    pub group: usize,
    pub start: u64,
    pub end: u64,
}

/// One dispatch. The target's buffers are bound from element `offset` (a multiple of the
/// storage offset alignment) for `end` elements, and the shader updates binding indices
/// `begin..end` (the `begin`/`end` of `Step` in shaders/common.wgsl), i.e. target elements
/// `offset + begin .. offset + end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub target: usize,
    pub group: usize,
    pub offset: u64,
    pub begin: u64,
    pub end: u64,
}

impl Window {
    pub fn len(&self) -> u64 {
        self.end - self.begin
    }
}

/// Cuts `spans` into windows of at most `window` elements whose bindings hold at most
/// `binding` elements and start at multiples of `alignment` elements. Span starts and
/// `window` must be multiples of 4, so no window splits a vec4 (only a span's last window may
/// end off one); windows cover every element of every span exactly once, in order.
pub(crate) fn windows(spans: &[Span], window: u64, binding: u64, alignment: u64) -> Vec<Window> {
    debug_assert!(window.is_multiple_of(4) && binding >= window && alignment.is_multiple_of(4));
    let mut windows = Vec::new();
    for span in spans {
        debug_assert!(span.start.is_multiple_of(4) && span.start < span.end);
        let mut start = span.start;
        while start < span.end {
            let offset = start - start % alignment;
            let begin = start - offset;
            let len = window.min(span.end - start).min(binding - begin);
            windows.push(Window {
                target: span.target,
                group: span.group,
                offset,
                begin,
                end: begin + len,
            });
            start += len;
        }
    }
    windows
}

/// What one invocation of a kernel updates: a `vec4<f32>` (16-byte loads and stores) or one
/// `f32`. The shader's `V` (see shaders/common.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lanes {
    /// Four elements per invocation, loaded and stored as one `vec4<f32>`: a window's body.
    Vector,
    /// One element per invocation: the 1 to 3 elements past a window's last whole vec4.
    Scalar,
}

impl Lanes {
    /// Elements per invocation.
    pub fn width(self) -> u64 {
        match self {
            Lanes::Vector => 4,
            Lanes::Scalar => 1,
        }
    }
}

/// One dispatch of window `window`: items `begin..end` of its bindings, counted in `lanes`
/// (vec4s or f32s). Its buffers are bound from the window's offset for `binding_bytes()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dispatch {
    pub window: usize,
    pub lanes: Lanes,
    pub begin: u64,
    pub end: u64,
}

impl Dispatch {
    pub fn len(&self) -> u64 {
        self.end - self.begin
    }

    /// Bytes each buffer binding of this dispatch holds from the window's offset: the
    /// window's whole vec4s for the vector dispatch, every element for the scalar tail.
    pub fn binding_bytes(&self) -> u64 {
        self.end * self.lanes.width() * 4
    }
}

/// The dispatches of `windows`, in order: for each, a vector dispatch over its whole vec4s
/// (windows start on multiples of 4) and, when it ends mid-vec4, a scalar dispatch over the 1
/// to 3 elements left. Together they cover each element of each window once.
pub(crate) fn dispatches(windows: &[Window]) -> Vec<Dispatch> {
    let mut dispatches = Vec::with_capacity(windows.len());
    for (index, window) in windows.iter().enumerate() {
        debug_assert!(window.begin.is_multiple_of(4));
        let whole = window.end - window.end % 4;
        if whole > window.begin {
            dispatches.push(Dispatch {
                window: index,
                lanes: Lanes::Vector,
                begin: window.begin / 4,
                end: whole / 4,
            });
        }
        if whole < window.end {
            dispatches.push(Dispatch {
                window: index,
                lanes: Lanes::Scalar,
                begin: whole,
                end: window.end,
            });
        }
    }
    dispatches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u64, end: u64) -> Span {
        Span {
            target: 0,
            group: 0,
            start,
            end,
        }
    }

    #[test]
    fn windows_cover_each_element_once_within_the_limits() {
        let cases = [
            (vec![span(0, 1)], 1000, 1000, 8),
            (vec![span(0, 5003)], 1000, 1000, 8),
            (vec![span(0, 5003)], 1000, 1000, 64),
            (vec![span(0, 4000)], 1000, 1000, 64),
            (vec![span(64, 1000), span(1024, 7001)], 1000, 1024, 64),
            (vec![span(0, 50_000_000)], 33_554_432, 33_554_432, 8),
            (vec![span(12, 100_003)], 4096, 4096, 64),
        ];
        for (spans, window, binding, alignment) in cases {
            let cut = windows(&spans, window, binding, alignment);
            let mut next = cut.iter();
            for span in &spans {
                let mut covered = span.start;
                for w in next.by_ref() {
                    assert_eq!(w.offset % alignment, 0, "{w:?}");
                    assert!(w.end <= binding && w.len() <= window, "{w:?}");
                    assert_eq!(w.offset + w.begin, covered, "gap or overlap at {w:?}");
                    assert_eq!(covered % 4, 0, "{w:?} splits a vec4");
                    covered += w.len();
                    if covered == span.end {
                        break;
                    }
                }
                assert_eq!(covered, span.end, "{spans:?} not covered");
            }
            assert!(next.next().is_none());
        }
    }

    #[test]
    fn dispatches_cover_each_window_once_in_vectors_then_a_scalar_tail() {
        for (spans, window, alignment) in [
            (vec![span(0, 1)], 1000, 8),
            (vec![span(0, 3)], 1000, 8),
            (vec![span(0, 4)], 1000, 8),
            (vec![span(0, 1025)], 1000, 64),
            (vec![span(0, 5003)], 1004, 64),
            (vec![span(64, 1001), span(1024, 7002)], 1000, 64),
        ] {
            let cut = windows(&spans, window, window, alignment);
            let planned = dispatches(&cut);
            for (index, w) in cut.iter().enumerate() {
                let mut covered = w.begin;
                for d in planned.iter().filter(|d| d.window == index) {
                    let width = d.lanes.width();
                    assert_eq!(d.begin * width, covered, "{d:?} of {w:?}");
                    assert!(d.len() > 0 && d.binding_bytes() <= w.end * 4, "{d:?}");
                    if d.lanes == Lanes::Scalar {
                        assert!(d.len() < 4, "{d:?} is more than a tail");
                    }
                    covered = d.end * width;
                }
                assert_eq!(covered, w.end, "{w:?} not covered by {planned:?}");
            }
        }
    }

    #[test]
    fn an_unaligned_start_is_reached_through_begin() {
        // Alignment 64 elements (256 bytes): element 1000 is bound from 960.
        let cut = windows(&[span(0, 2500)], 1000, 1024, 64);
        assert_eq!(
            cut.iter()
                .map(|w| (w.offset, w.begin, w.end))
                .collect::<Vec<_>>(),
            [(0, 0, 1000), (960, 40, 1024), (1984, 0, 516)]
        );
    }
}
