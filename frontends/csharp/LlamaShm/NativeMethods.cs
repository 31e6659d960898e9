// NativeMethods: the P/Invoke declarations of the llama-shm C ABI (crates/llama-shm-ffi/include/
// llama_shm.h, ABI 5) and the structs it exchanges, laid out as the header declares them. Only
// this file names the native entry points; the rest of the library goes through ClientHandle,
// CancellerHandle and Utf8.
//
// Strings cross as NUL-terminated UTF-8 byte arrays (C# 7 has no LPUTF8Str); returned strings are
// the library's malloc'ed copies and go back through lshm_string_free / lshm_response_free.

using System;
using System.Runtime.InteropServices;

namespace LlamaShm
{
    internal static class NativeMethods
    {
        /// <summary>Resolved by Mono as libllama_shm_ffi.so (LD_LIBRARY_PATH, or next to the
        /// assembly, or a dllmap).</summary>
        internal const string Lib = "llama_shm_ffi";

        /// <summary>LSHM_ABI_VERSION of the header these declarations follow.</summary>
        internal const uint AbiVersion = 5;

        internal const uint PolicyTruncate = 0;
        internal const uint PolicyStrict = 1;

        /// <summary>lshm_options (56 bytes on LP64).</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct LshmOptions
        {
            public uint struct_size;
            public uint prompt_policy;
            public ulong startup_timeout_ms;
            public ulong request_timeout_ms;
            public ulong max_answer_bytes;
            public uint restart_max_attempts;
            public uint reserved;
            public ulong restart_backoff_ms;
            public ulong restart_max_backoff_ms;
        }

        /// <summary>lshm_response (64 bytes on LP64).</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct LshmResponse
        {
            public IntPtr text;
            public UIntPtr text_len;
            public uint finish;
            public uint truncated;
            public ulong seq;
            public uint prompt_tokens;
            public uint generated_tokens;
            public ulong prompt_time_us;
            public ulong generation_time_us;
            public uint cached_tokens;
            public uint reserved;
        }

        /// <summary>lshm_message (24 bytes on LP64): <c>content_len</c> bytes of UTF-8 at
        /// <c>content</c> (ABI 5).</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct LshmMessage
        {
            public uint role;
            public uint reserved;
            public IntPtr content;
            public UIntPtr content_len;
        }

        /// <summary>lshm_request_options (40 bytes on LP64; ABI 5). The strings are
        /// NUL-terminated UTF-8, pinned for the call; IntPtr.Zero is none.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct LshmRequestOptions
        {
            public uint struct_size;
            public uint max_tokens;
            public ulong deadline_ms;
            public uint seed;
            public uint drop_oldest;
            public IntPtr json_schema;
            public IntPtr grammar;
        }

        /// <summary>lshm_response_extras (8 bytes; ABI 5): struct_size is set by the caller.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct LshmResponseExtras
        {
            public uint struct_size;
            public uint dropped_messages;
        }

        /// <summary>lshm_embeddings (24 bytes on LP64; ABI 5): count × dim floats at values,
        /// freed by lshm_embeddings_free.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct LshmEmbeddings
        {
            public IntPtr values;
            public UIntPtr count;
            public UIntPtr dim;
        }

        /// <summary>lshm_chunk_fn: called on the thread that called lshm_stream; must not throw
        /// into native code.</summary>
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        internal delegate void ChunkFn(IntPtr chunk, UIntPtr len, IntPtr userData);

        [DllImport(Lib)]
        internal static extern uint lshm_abi_version();

        [DllImport(Lib)]
        internal static extern IntPtr lshm_version();

        [DllImport(Lib)]
        internal static extern IntPtr lshm_status_message(int code);

        [DllImport(Lib)]
        internal static extern LshmOptions lshm_options_default();

        [DllImport(Lib)]
        internal static extern int lshm_client_new_with(byte[] worker, IntPtr[] argv, UIntPtr argc,
                                                        ref LshmOptions options, out ClientHandle client,
                                                        out IntPtr error);

        [DllImport(Lib)]
        internal static extern int lshm_client_attach(byte[] prefix, ref LshmOptions options,
                                                      out ClientHandle client, out IntPtr error);

        [DllImport(Lib)]
        internal static extern int lshm_client_worker_pid(ClientHandle client, out uint pid);

        [DllImport(Lib)]
        internal static extern int lshm_request(ClientHandle client, byte[] user, byte[] system,
                                                ulong deadlineMs, uint maxTokens,
                                                out LshmResponse response, out IntPtr error);

        [DllImport(Lib)]
        internal static extern int lshm_stream(ClientHandle client, byte[] user, byte[] system,
                                               ulong deadlineMs, uint maxTokens, ChunkFn onChunk,
                                               IntPtr userData, out LshmResponse response,
                                               out IntPtr error);

        [DllImport(Lib)]
        internal static extern void lshm_response_free(ref LshmResponse response);

        [DllImport(Lib)]
        internal static extern int lshm_request_with(ClientHandle client, byte[] user, byte[] system,
                                                     ref LshmRequestOptions options, out LshmResponse response,
                                                     ref LshmResponseExtras extras, out IntPtr error);

        [DllImport(Lib)]
        internal static extern int lshm_stream_with(ClientHandle client, byte[] user, byte[] system,
                                                    ref LshmRequestOptions options, ChunkFn onChunk, IntPtr userData,
                                                    out LshmResponse response, ref LshmResponseExtras extras,
                                                    out IntPtr error);

        [DllImport(Lib)]
        internal static extern int lshm_chat(ClientHandle client, [In] LshmMessage[] messages, UIntPtr count,
                                             ref LshmRequestOptions options, out LshmResponse response,
                                             ref LshmResponseExtras extras, out IntPtr error);

        [DllImport(Lib)]
        internal static extern int lshm_chat_stream(ClientHandle client, [In] LshmMessage[] messages, UIntPtr count,
                                                    ref LshmRequestOptions options, ChunkFn onChunk, IntPtr userData,
                                                    out LshmResponse response, ref LshmResponseExtras extras,
                                                    out IntPtr error);

        [DllImport(Lib)]
        internal static extern int lshm_embed(ClientHandle client, [In] IntPtr[] texts, UIntPtr count,
                                              out LshmEmbeddings embeddings, out IntPtr error);

        [DllImport(Lib)]
        internal static extern void lshm_embeddings_free(ref LshmEmbeddings embeddings);

        [DllImport(Lib)]
        internal static extern int lshm_count_tokens(ClientHandle client, byte[] text, out uint tokens, out IntPtr error);

        [DllImport(Lib)]
        internal static extern int lshm_count_conversation_tokens(ClientHandle client, [In] LshmMessage[] messages,
                                                                  UIntPtr count, out uint tokens, out IntPtr error);

        [DllImport(Lib)]
        internal static extern int lshm_canceller_new(ClientHandle client, out CancellerHandle canceller);

        [DllImport(Lib)]
        internal static extern int lshm_cancel(CancellerHandle canceller, out int inFlight);

        [DllImport(Lib)]
        internal static extern void lshm_canceller_free(IntPtr canceller);

        [DllImport(Lib)]
        internal static extern int lshm_client_shutdown(IntPtr client, out IntPtr error);

        [DllImport(Lib)]
        internal static extern void lshm_client_free(IntPtr client);

        [DllImport(Lib)]
        internal static extern void lshm_string_free(IntPtr s);
    }
}
