// Utf8: strings to and from the C ABI's NUL-terminated UTF-8, by hand (C# 7 on .NET Framework 4.x
// has no UTF-8 string marshalling). Encoding is strict: a lone surrogate is refused here rather
// than sent as U+FFFD, and a NUL (which C would read as the end) is refused as well.

using System;
using System.Runtime.InteropServices;
using System.Text;

namespace LlamaShm
{
    internal static class Utf8
    {
        private static readonly UTF8Encoding Strict = new UTF8Encoding(false, true);

        /// <summary>The UTF-8 bytes of <paramref name="s"/> followed by a NUL. Throws
        /// ArgumentNullException, or ArgumentException for a NUL character or a lone
        /// surrogate, naming <paramref name="parameter"/>.</summary>
        internal static byte[] ToNative(string s, string parameter)
        {
            if (s == null)
                throw new ArgumentNullException(parameter);
            if (s.IndexOf('\0') >= 0)
                throw new ArgumentException(parameter + " contains a NUL character", parameter);
            try
            {
                var bytes = new byte[Strict.GetByteCount(s) + 1];
                Strict.GetBytes(s, 0, s.Length, bytes, 0);
                return bytes;
            }
            catch (EncoderFallbackException e)
            {
                throw new ArgumentException(parameter + " is not valid UTF-16 (a lone surrogate)", parameter, e);
            }
        }

        /// <summary>Decodes <paramref name="len"/> bytes of UTF-8 at <paramref name="p"/>.</summary>
        internal static string FromNative(IntPtr p, ulong len)
        {
            if (p == IntPtr.Zero || len == 0)
                return "";
            var bytes = new byte[checked((int)len)];
            Marshal.Copy(p, bytes, 0, bytes.Length);
            return Encoding.UTF8.GetString(bytes);
        }

        /// <summary>Decodes a NUL-terminated UTF-8 string at <paramref name="p"/> (null for
        /// NULL); the caller keeps ownership.</summary>
        internal static string FromNativeZ(IntPtr p)
        {
            if (p == IntPtr.Zero)
                return null;
            int len = 0;
            while (Marshal.ReadByte(p, len) != 0)
                len++;
            return FromNative(p, (ulong)len);
        }

        /// <summary>Decodes and frees an out_error string of the library (null for NULL).</summary>
        internal static string TakeError(IntPtr error)
        {
            if (error == IntPtr.Zero)
                return null;
            try
            {
                return FromNativeZ(error);
            }
            finally
            {
                NativeMethods.lshm_string_free(error);
            }
        }
    }
}
