//! How a step is cut into dispatches: every run of elements one rule updates is split into
//! windows that fit the adapter's storage-binding limit, each bound at an aligned offset.
//! Pure arithmetic, shared by every optimizer kind.

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
