//! The wake-up protocol core, generic over its atomics so that loom can check it.
