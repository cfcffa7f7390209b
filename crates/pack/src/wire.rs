//! A cursor over untrusted bytes that hands out fixed-size pieces as arrays.
//! It owns one invariant: parsing a format never indexes past the end of its
//! input. Every read returns `None` when the bytes run out, and the format
//! modules turn that into `PackError::BadFormat`.

/// Reads fixed-size fields from the front of a byte slice.
pub(crate) struct Take<'a> {
    rest: &'a [u8],
}

impl<'a> Take<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The next `N` bytes, or `None` if fewer remain.
    pub(crate) fn array<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        let (head, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|b| b[0])
    }

    pub(crate) fn u32_le(&mut self) -> Option<u32> {
        self.array::<4>().map(|b| u32::from_le_bytes(*b))
    }

    pub(crate) fn u64_le(&mut self) -> Option<u64> {
        self.array::<8>().map(|b| u64::from_le_bytes(*b))
    }
}
