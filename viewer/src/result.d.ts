/* Generated from src/secondreader/result.schema.json by `npm run types` (viewer/scripts/result-types.mjs): do not edit. */

/**
 * Contract 2: one study's result, as ``secondreader screen`` writes it. A file without a
 * readable Study Instance UID is a result of its own: null UID, failed, and its ``source``.
 */
export interface StudyResult {
  study_instance_uid: string | null;
  status: 'screened' | 'ineligible' | 'failed';
  /**
   * A short sentence, never patient data; null when screened.
   */
  reason: string | null;
  /**
   * @minItems 1
   */
  instances: [Instance, ...Instance[]];
  priority: Priority;
  findings: Finding[];
  regions: Region[];
  first_read: FirstRead;
  artifacts: Artifacts;
  timing_ms: Timing;
  models: ModelRef[];
  modality: string | null;
  /**
   * Only in a result without a study UID.
   */
  source?: string | null;
}
/**
 * One input file of the study: a file name (never a path), what became of it and why.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "Instance".
 */
export interface Instance {
  /**
   * The file's name, never a path.
   */
  source: string;
  sop_instance_uid: string | null;
  status: 'screened' | 'ineligible' | 'failed' | 'duplicate';
  /**
   * Why it was not screened; required unless screened.
   */
  reason: string | null;
  /**
   * The eligibility rules that decided.
   */
  rules?: string[];
  /**
   * Finding code -> why its model does not apply to this image.
   */
  not_applicable?: {
    [k: string]: string;
  };
}
/**
 * The study's priority: a score 0-100, the route and the rule that decided.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "Priority".
 */
export interface Priority {
  score: number;
  route: 'urgent' | 'review' | 'none';
  rule: string;
}
/**
 * One finding from one model. Not applicable (outside the model's scope): probability null,
 * neither positive nor negative, and ``not_applicable_reason`` says why.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "Finding".
 */
export interface Finding {
  code: string;
  /**
   * Calibrated; null where the model does not apply.
   */
  probability: number | null;
  positive: boolean;
  operating_point: number;
  /**
   * name@version of the model card.
   */
  model: string;
  routes: boolean;
  mode: 'live' | 'shadow';
  applicable: boolean;
  not_applicable_reason: string | null;
}
/**
 * A flagged region, in pixel coordinates of the source image's Pixel Data (rows, columns).
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "Region".
 */
export interface Region {
  /**
   * Unique in the study and stable.
   */
  id: string;
  finding: string;
  score: number;
  sop_instance_uid: string;
  /**
   * 1-based.
   */
  frame: number;
  /**
   * [row_min, col_min, row_max, col_max): start < stop in each axis.
   *
   * @minItems 4
   * @maxItems 4
   */
  bbox: [number, number, number, number];
  /**
   * [row, col], inside the box.
   *
   * @minItems 2
   * @maxItems 2
   */
  centroid: [number, number];
  /**
   * Null where the pixel spacing is unknown.
   */
  area_mm2: number | null;
  area_px: number;
}
/**
 * The first radiologist's report compared with the AI's findings. Without a report, only
 * ``status`` (none), ``labels`` and ``discordant`` are present.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "FirstRead".
 */
export interface FirstRead {
  status: 'none' | 'negative' | 'positive' | 'uncertain';
  /**
   * Finding code -> what the report says, in effect.
   */
  labels: {
    [k: string]: 'present' | 'negated' | 'uncertain' | 'not_mentioned';
  };
  /**
   * Codes the AI calls positive that the report negates or omits.
   */
  discordant: string[];
  /**
   * The report text.
   */
  text?: string;
  /**
   * Finding code -> the sentence behind its label.
   */
  evidence?: {
    [k: string]: string;
  };
  source?: ('api' | 'hl7' | 'fhir' | 'csv') | null;
  received_at?: string | null;
  /**
   * The labeler's own reading of the text.
   */
  labeler?: {
    [k: string]: 'present' | 'negated' | 'uncertain' | 'not_mentioned';
  };
  /**
   * Where each label in effect comes from.
   */
  sources?: {
    [k: string]: 'labeler' | 'structured' | 'reviewer';
  };
  corrections?: {
    [k: string]: Correction;
  };
}
/**
 * A reviewer's verdict that the labeler mis-read the report for one finding.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "Correction".
 */
export interface Correction {
  label: 'present' | 'negated' | 'uncertain' | 'not_mentioned';
  labeler_label: 'present' | 'negated' | 'uncertain' | 'not_mentioned';
  reviewer: string;
  at: string;
}
/**
 * Output files, relative to the output folder, and whether they are written yet.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "Artifacts".
 */
export interface Artifacts {
  heatmaps: string[];
  dicom: string[];
  status: 'none' | 'pending' | 'written' | 'failed';
}
/**
 * Milliseconds per stage (``encode``: the outputs, 0 until they are written).
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "Timing".
 */
export interface Timing {
  load: number;
  preprocess: number;
  inference: number;
  postprocess: number;
  encode: number;
  total: number;
}
/**
 * A loaded model and the mode it ran in (``off``: not run).
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "ModelRef".
 */
export interface ModelRef {
  name: string;
  version: string;
  device_uid: string;
  mode: 'live' | 'shadow' | 'off';
}
/**
 * A finding as the audit row keeps it (by code).
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "AuditFinding".
 */
export interface AuditFinding {
  probability: number | null;
  positive: boolean;
  model: string;
  mode: 'live' | 'shadow';
  applicable: boolean;
  routes: boolean;
}
/**
 * A discordant finding's pictures, relative to the audit's output folder (no thumbnail: "").
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "AuditImages".
 */
export interface AuditImages {
  overlay: string;
  thumbnail: string;
}
/**
 * One study's row of ``secondreader audit`` (its checkpoint and ``audit.parquet``), built from
 * the study's result and its first read. ``labels`` adds ``unknown``: the report cannot speak to
 * the finding.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "AuditRow".
 */
export interface AuditRow {
  key: string;
  study_instance_uid: string | null;
  accession_number: string | null;
  study_month: string | null;
  status: 'screened' | 'ineligible' | 'failed';
  reason: string | null;
  source: string | null;
  priority_score: number;
  route: 'urgent' | 'review' | 'none';
  rule: string;
  findings: {
    [k: string]: AuditFinding;
  };
  report: 'available' | 'missing';
  labels: {
    [k: string]: 'present' | 'negated' | 'uncertain' | 'not_mentioned' | 'unknown';
  };
  discordant: boolean;
  discordant_findings: string[];
  evidence: {
    [k: string]: string | null;
  };
  images: {
    [k: string]: AuditImages;
  };
  instances: number;
  bad_files: BadFile[];
  timing_ms: {
    [k: string]: number;
  };
  /**
   * [started, finished], Unix seconds (not in a row that failed early).
   *
   * @minItems 2
   * @maxItems 2
   */
  clock?: [number, number];
}
/**
 * An instance of the study that could not be screened, and why.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "BadFile".
 */
export interface BadFile {
  source: string;
  reason: string | null;
}
/**
 * A reviewer's correction of the labeler, as the worklist keeps every one (in order).
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "CorrectionEntry".
 */
export interface CorrectionEntry {
  finding: string;
  label: 'present' | 'negated' | 'uncertain' | 'not_mentioned';
  labeler_label: 'present' | 'negated' | 'uncertain' | 'not_mentioned';
  reviewer: string;
  at: string;
  first_read_id: number;
}
/**
 * ``GET /v1/jobs/{id}`` and ``POST /v1/screen``: a job's status and, once done, its studies
 * (as ``GET /v1/studies/{uid}`` shows them; a file without a study UID as its bare result).
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "JobView".
 */
export interface JobView {
  job_id: string;
  status: 'queued' | 'running' | 'done' | 'failed';
  studies: (StudyView | StudyResult)[];
  reason?: string | null;
}
/**
 * ``GET /v1/studies/{uid}``: the kept result with the worklist's state, the time it has
 * waited (``priority`` then includes any escalation for waiting) and its reviews.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "StudyView".
 */
export interface StudyView {
  study_instance_uid: string | null;
  status: 'screened' | 'ineligible' | 'failed';
  /**
   * A short sentence, never patient data; null when screened.
   */
  reason: string | null;
  /**
   * @minItems 1
   */
  instances: [Instance, ...Instance[]];
  priority: Priority;
  findings: Finding[];
  regions: Region[];
  first_read: FirstRead;
  artifacts: Artifacts;
  timing_ms: Timing;
  models: ModelRef[];
  modality: string | null;
  /**
   * Only in a result without a study UID.
   */
  source?: string | null;
  ai_priority: Priority;
  first_read_corrections?: CorrectionEntry[];
  state: 'new' | 'screened' | 'awaiting_review' | 'reviewed' | 'ineligible' | 'failed';
  /**
   * Since the study was received (replicas' clocks may differ a little).
   */
  waiting_seconds: number;
  reviews: Review[];
}
/**
 * A radiologist's verdict on one region.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "Review".
 */
export interface Review {
  region_id: string;
  finding: string;
  verdict: 'confirmed_miss' | 'false_positive' | 'already_reported';
  reviewer: string;
  at: string;
}
/**
 * ``POST /v1/reports`` when the first read matched several studies.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "ReportAnswer".
 */
export interface ReportAnswer {
  studies: StoredResult[];
}
/**
 * The result as the worklist keeps it: ``priority`` is the routed priority (the AI's with the
 * first read), ``ai_priority`` the AI's alone, and the reviewers' corrections of the labeler.
 * ``POST /v1/reports`` answers with it.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "StoredResult".
 */
export interface StoredResult {
  study_instance_uid: string | null;
  status: 'screened' | 'ineligible' | 'failed';
  /**
   * A short sentence, never patient data; null when screened.
   */
  reason: string | null;
  /**
   * @minItems 1
   */
  instances: [Instance, ...Instance[]];
  priority: Priority;
  findings: Finding[];
  regions: Region[];
  first_read: FirstRead;
  artifacts: Artifacts;
  timing_ms: Timing;
  models: ModelRef[];
  modality: string | null;
  /**
   * Only in a result without a study UID.
   */
  source?: string | null;
  ai_priority: Priority;
  first_read_corrections?: CorrectionEntry[];
}
/**
 * A finding as the worklist summarises it.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "WorklistFinding".
 */
export interface WorklistFinding {
  code: string;
  probability: number | null;
  positive: boolean;
  routes: boolean;
  mode: 'live' | 'shadow';
  applicable: boolean;
}
/**
 * The first read's status and the discordant finding codes.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "WorklistFirstRead".
 */
export interface WorklistFirstRead {
  status: 'none' | 'negative' | 'positive' | 'uncertain';
  discordant: string[];
}
/**
 * A row of ``GET /v1/worklist``: a summary of the study's kept result (``regions``: how many).
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "WorklistItem".
 */
export interface WorklistItem {
  study_instance_uid: string;
  /**
   * The study's pseudonymous key, as in the logs.
   */
  study_key: string;
  state: 'new' | 'screened' | 'awaiting_review' | 'reviewed' | 'ineligible' | 'failed';
  status: 'screened' | 'ineligible' | 'failed';
  priority: Priority;
  ai_priority: Priority;
  /**
   * Since the study was received (replicas' clocks may differ a little).
   */
  waiting_seconds: number;
  received_at: string;
  first_read: WorklistFirstRead;
  findings: WorklistFinding[];
  regions: number;
  modality: string | null;
}
/**
 * ``GET /v1/worklist``: the rows, highest priority first.
 *
 * This interface was referenced by `StudyResult`'s JSON-Schema
 * via the `definition` "WorklistPage".
 */
export interface WorklistPage {
  items: WorklistItem[];
}
