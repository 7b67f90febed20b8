// @ts-check
// The /v1 API with the API key from sessionStorage in the Authorization header, never in a URL.
// What it answers is typed by result.d.ts, generated from contract 2's JSON Schema (npm run types).
/** @typedef {import('./result').StudyView} StudyView */
/** @typedef {import('./result').WorklistPage} WorklistPage */
const KEY_NAME = 'secondreader.apiKey';

// The API lives beside the viewer: /viewer/ -> /v1/ (works behind a path prefix too).
export const API_BASE = new URL('../v1/', window.location.href).href;

export class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

export function getKey() {
  return window.sessionStorage.getItem(KEY_NAME);
}

export function setKey(key) {
  window.sessionStorage.setItem(KEY_NAME, key);
}

export function clearKey() {
  window.sessionStorage.removeItem(KEY_NAME);
}

export function authHeaders() {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

/**
 * @param {string} path relative to API_BASE
 * @param {{ method?: string, json?: unknown, raw?: boolean, key?: string }} [options]
 * @returns {Promise<any>} the parsed JSON body (the Response itself when ``raw``)
 */
async function request(path, { method = 'GET', json, raw = false, key } = {}) {
  /** @type {Record<string, string>} */
  const headers = key ? { Authorization: `Bearer ${key}` } : authHeaders();
  if (json !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(new URL(path, API_BASE), {
    method,
    headers,
    body: json === undefined ? undefined : JSON.stringify(json),
    cache: 'no-store',
    credentials: 'omit',
    referrerPolicy: 'no-referrer',
  });
  if (response.status === 401) {
    if (!key) onUnauthorized();
    throw new ApiError(401, 'the API key was refused');
  }
  if (!response.ok) {
    let reason = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      reason = body.reason || body.error || reason;
    } catch {
      // not JSON: keep the status
    }
    throw new ApiError(response.status, reason);
  }
  return raw ? response : response.json();
}

export function studyPath(uid) {
  return `studies/${encodeURIComponent(uid)}`;
}

export const api = {
  /** Checks a key without storing it: any answer but 401 means the key is accepted. */
  async checkKey(key) {
    try {
      await request('worklist', { key });
      return true;
    } catch (error) {
      if (error instanceof ApiError && error.status !== 401) return true;
      if (error instanceof ApiError) return false;
      throw error;
    }
  },
  /** @returns {Promise<WorklistPage>} */
  worklist({ state = '', route = '' } = {}) {
    const query = new URLSearchParams();
    if (state) query.set('state', state);
    if (route) query.set('route', route);
    const suffix = query.toString() ? `?${query}` : '';
    return request(`worklist${suffix}`);
  },
  /** @returns {Promise<StudyView>} */
  study(uid) {
    return request(studyPath(uid));
  },
  /** @returns {Promise<StudyView>} the study with the verdict recorded */
  review(uid, { regionId, verdict, reviewer }) {
    return request(`${studyPath(uid)}/reviews`, {
      method: 'POST',
      json: { region_id: regionId, verdict, reviewer },
    });
  },
  /** "The labeler was wrong": what the first read really says about a finding.
   * @returns {Promise<StudyView>} the study compared and routed again */
  correctFirstRead(uid, { finding, label, reviewer }) {
    return request(`${studyPath(uid)}/reviews`, {
      method: 'POST',
      json: { verdict: 'labeler_wrong', finding, label, reviewer },
    });
  },
  async heatmapLayer(uid, sop, finding) {
    const path = `${studyPath(uid)}/instances/${encodeURIComponent(sop)}/heatmaps/${encodeURIComponent(finding)}.layer.png`;
    const response = await request(path, { raw: true });
    return createImageBitmap(await response.blob());
  },
  /** The Cornerstone image ID of one frame (1-based; the loader's ``frame`` parameter, which it
   * strips from the URL it fetches: every frame shares one download). */
  dicomImageId(uid, sop, frame = 1) {
    const url = new URL(`${studyPath(uid)}/instances/${encodeURIComponent(sop)}/dicom`, API_BASE).href;
    return `wadouri:${url}${frame > 1 ? `?frame=${frame}` : ''}`;
  },
};
