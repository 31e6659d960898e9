// AbiTests: the assembly refuses a libllama_shm_ffi of another ABI. The Rust runner runs this
// fixture twice: against the real library (ABI 5: accepted), and with LD_LIBRARY_PATH pointing
// at a stand-in library whose lshm_abi_version returns $LLAMA_SHM_TEST_FAKE_ABI (refused).

using System;
using NUnit.Framework;

namespace LlamaShm.Tests
{
    [TestFixture]
    public class AbiTests
    {
        [Test, Timeout(60000)]
        public void The_library_ABI_is_checked_at_start()
        {
            string fake = Environment.GetEnvironmentVariable("LLAMA_SHM_TEST_FAKE_ABI");
            if (string.IsNullOrEmpty(fake))
            {
                Assert.That(LlamaShmClient.LibraryAbiVersion, Is.EqualTo(5u));
                Assert.That(LlamaShmClient.RequiredAbiVersion, Is.EqualTo(5u));
                Assert.That(LlamaShmClient.LibraryVersion, Is.StringMatching(@"^\d+\.\d+\.\d+"));
                using (var client = LlamaShmClient.Start(TestWorker.Echo()))
                    Assert.That(client.SendRequest("abi", "s").Text, Is.EqualTo("s\nabi"));
                return;
            }
            uint found = uint.Parse(fake);
            Assert.That(LlamaShmClient.LibraryAbiVersion, Is.EqualTo(found), "the stand-in library is loaded");
            var e = Assert.Throws<IncompatibleLibraryException>(() => LlamaShmClient.Start(TestWorker.Echo()));
            Assert.That(e.LibraryAbiVersion, Is.EqualTo(found));
            Assert.That(e.ExpectedAbiVersion, Is.EqualTo(5u));
            Assert.That(e.Message, Is.StringContaining("ABI " + found).And.StringContaining("ABI 5"));
        }
    }
}
