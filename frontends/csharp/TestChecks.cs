// TestChecks: the check helpers shared by the test programs (FfiClientTest, WireClientTest), which
// are each compiled together with this file.

using System;

namespace LlamaShm
{
    public static class TestChecks
    {
        /// <summary>How many checks have passed so far.</summary>
        public static int Passed { get; private set; }

        /// <summary>A failed check: the test program reports its message and exits 1.</summary>
        public sealed class CheckFailed : Exception
        {
            public CheckFailed(string message) : base(message) { }
        }

        /// <summary>Counts a passed check if <paramref name="ok"/>, else throws CheckFailed(what).</summary>
        public static void Check(bool ok, string what)
        {
            if (!ok)
                throw new CheckFailed(what);
            Passed++;
        }

        /// <summary>Counts a check that passed without a condition to test (an expected exception).</summary>
        public static void Pass()
        {
            Passed++;
        }

        /// <summary>Runs a test program's <paramref name="body"/> and returns its exit code: 0 if it
        /// completes; 1 after writing "PROGRAM: FAILED: message" for a failed check, or
        /// "PROGRAM: " + describe(e) for any other exception, on stderr.</summary>
        public static int Run(string program, Action body, Func<Exception, string> describe)
        {
            try
            {
                body();
                return 0;
            }
            catch (CheckFailed e)
            {
                Console.Error.WriteLine(program + ": FAILED: " + e.Message);
                return 1;
            }
            catch (Exception e)
            {
                Console.Error.WriteLine(program + ": " + describe(e));
                return 1;
            }
        }
    }
}
