//! How a step is cut into dispatches: every run of elements one rule updates is split into
//! windows that fit the adapter's storage-binding limit, each bound at an aligned offset, and
//! each window into a vector dispatch over its whole quanta (vec4s, or 256-element blocks
//! where a state is stored in 8-bit blocks) and, where it ends mid-quantum, a scalar dispatch
//! over the rest. Pure arithmetic, shared by every optimizer kind.

/// Elements `start..end` of one target (a caller's params/grads pair), updated by the rule of
/// parameter group `group`; the optimizer keeps the span's state (and master weights) in
/// buffers of its own, from the span's first element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub target: usize,
    pub group: usize,
    pub start: u64,
    pub end: u64,
    /// The index of element `start` in its run (its group's run of a packed layout): where
    /// the counter-based random streams of stochastic rounding start, so that a shard of a
    /// run rounds each element as the whole run would.
    pub first: u64,
}

/// One window of span `span`. The span's state buffers are bound from its element `offset`
/// (a multiple of the span's alignment), the target's params and grads from element
/// `origin + offset`, each for `end` elements, and the shader updates binding indices
/// `begin..end` (the `begin`/`end` of `Step` in prelude.wgsl), i.e. span elements
/// `offset + begin .. offset + end`. Every dispatch but a span's last covers whole quanta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub span: usize,
    pub target: usize,
    pub group: usize,
    /// The span's first element in its target.
    pub origin: u64,
    pub offset: u64,
    pub begin: u64,
    pub end: u64,
    pub quantum: u64,
}

impl Window {
    pub fn len(&self) -> u64 {
        self.end - self.begin
    }
}

/// How a span may be cut: its bindings start at multiples of `alignment` elements, and every
/// window but its last holds whole `quantum`s (4, or 256 with 8-bit state), a power of two
/// dividing `alignment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grain {
    pub alignment: u64,
    pub quantum: u64,
}

/// Cuts `spans` into windows of at most `window` elements (rounded down to whole quanta)
/// whose bindings hold at most `binding` elements, cut as `grain` says for each span. Windows
/// cover every element of every span exactly once, in order, and only a span's last window may
/// end mid-quantum.
pub(crate) fn windows(
    spans: &[Span],
    window: u64,
    binding: u64,
    grain: impl Fn(&Span) -> Grain,
) -> Vec<Window> {
    let mut windows = Vec::new();
    for (index, span) in spans.iter().enumerate() {
        let Grain { alignment, quantum } = grain(span);
        debug_assert!(alignment.is_multiple_of(quantum) && span.start < span.end);
        let most = (window - window % quantum).max(quantum);
        let len = span.end - span.start;
        let mut start = 0;
        while start < len {
            let offset = start - start % alignment;
            let begin = start - offset;
            let room = binding - begin;
            let count = most.min(len - start).min(room - room % quantum);
            windows.push(Window {
                span: index,
                target: span.target,
                group: span.group,
                origin: span.start,
                offset,
                begin,
                end: begin + count,
                quantum,
            });
            start += count;
        }
    }
    windows
}

/// What one invocation of a kernel updates: four elements (a `vec4<f32>` of values) or one. The
/// shader's `V` (see prelude.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lanes {
    /// Four elements per invocation, loaded and stored as one `vec4<f32>`: a window's body.
    Vector,
    /// One element per invocation: the elements past a window's last whole quantum.
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
/// (vec4s or elements). Its buffers are bound from the window's offset for
/// `binding_elements()`.
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

    /// Elements each buffer binding of this dispatch holds from the window's offset: the
    /// window's whole vec4s for the vector dispatch, every element for the scalar tail.
    pub fn binding_elements(&self) -> u64 {
        self.end * self.lanes.width()
    }
}

/// The dispatches of `windows`, in order: for each, a vector dispatch over its whole quanta
/// (windows start on whole quanta) and, when it ends mid-quantum, a scalar dispatch over the
/// rest, fewer elements than one workgroup holds. Together they cover each element of each
/// window once.
pub(crate) fn dispatches(windows: &[Window]) -> Vec<Dispatch> {
    let mut dispatches = Vec::with_capacity(windows.len());
    for (index, window) in windows.iter().enumerate() {
        debug_assert!(window.begin.is_multiple_of(window.quantum));
        let whole = window.end - window.end % window.quantum;
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
            first: 0,
            target: 0,
            group: 0,
            start,
            end,
        }
    }

    fn cut(spans: &[Span], window: u64, binding: u64, alignment: u64) -> Vec<Window> {
        windows(spans, window, binding, |_| Grain {
            alignment,
            quantum: 4,
        })
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
            let cut = cut(&spans, window, binding, alignment);
            let mut next = cut.iter();
            for span in &spans {
                let mut covered = 0;
                for w in next.by_ref() {
                    assert_eq!(w.offset % alignment, 0, "{w:?}");
                    assert!(w.end <= binding && w.len() <= window, "{w:?}");
                    assert_eq!(w.origin, span.start, "{w:?}");
                    assert_eq!(w.offset + w.begin, covered, "gap or overlap at {w:?}");
                    assert_eq!(covered % 4, 0, "{w:?} splits a vec4");
                    assert_eq!((w.offset + w.begin) % 4, 0, "{w:?} splits a vec4");
                    covered += w.len();
                    if covered == span.end - span.start {
                        break;
                    }
                }
                assert_eq!(covered, span.end - span.start, "{spans:?} not covered");
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
            let cut = cut(&spans, window, window, alignment);
            let planned = dispatches(&cut);
            for (index, w) in cut.iter().enumerate() {
                let mut covered = w.begin;
                for d in planned.iter().filter(|d| d.window == index) {
                    let width = d.lanes.width();
                    assert_eq!(d.begin * width, covered, "{d:?} of {w:?}");
                    assert!(d.len() > 0 && d.binding_elements() <= w.end, "{d:?}");
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
        let cut = cut(&[span(0, 2500)], 1000, 1024, 64);
        assert_eq!(
            cut.iter()
                .map(|w| (w.offset, w.begin, w.end))
                .collect::<Vec<_>>(),
            [(0, 0, 1000), (960, 40, 1024), (1984, 0, 516)]
        );
    }
}
