// One error class for everything checkpoint/ refuses: a bad file, a bad tensor, a bad config key.
// The message always names the file and, when one is involved, the tensor (or config key), then the
// problem and, where there is one, the fix: a user facing a 40-shard checkpoint must know where to look.

export interface CheckpointErrorSubject {
  /** The file (or directory) the problem is in. */
  file: string;
  /** The tensor involved, if any. */
  tensor?: string;
  /** The config.json key involved, if any. */
  key?: string;
}

export class CheckpointError extends Error {
  readonly file: string;
  readonly tensor: string | undefined;
  readonly key: string | undefined;
  readonly problem: string;

  constructor(subject: CheckpointErrorSubject, problem: string) {
    const parts = [subject.file];
    if (subject.tensor !== undefined) parts.push(`tensor "${subject.tensor}"`);
    if (subject.key !== undefined) parts.push(`key "${subject.key}"`);
    super(`${parts.join(': ')}: ${problem}`);
    this.name = 'CheckpointError';
    this.file = subject.file;
    this.tensor = subject.tensor;
    this.key = subject.key;
    this.problem = problem;
  }
}
