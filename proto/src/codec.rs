//! The gRPC codec of every Tern service: prost's, with small buffers.
//!
//! tonic gives every stream an 8 KiB encode and an 8 KiB decode buffer up
//! front, and an encode buffer keeps the largest size it ever grew to for
//! the stream's life. A zone control plane holds a stream per proxy, and
//! most of them carry only ACKs and small deltas after the first config:
//! starting at 1 KiB and handing each message to HTTP/2 once 8 KiB are
//! encoded keeps that per-stream memory down (bench/propagation.sh) without
//! more copies; bigger messages still grow the buffer as they need.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, ProstCodec};

/// Initial buffer, and how much is encoded before it goes to HTTP/2.
const SETTINGS: (usize, usize) = (1024, 8 * 1024);

fn settings() -> BufferSettings {
    BufferSettings::new(SETTINGS.0, SETTINGS.1)
}

/// tonic-build's `codec_path` for every service (see `tests/generated.rs`).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
