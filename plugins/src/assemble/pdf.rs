//! Building one PDF out of image pages and the pages of other PDFs, with
//! lopdf. It must not read job files or decide page order: the `assemble`
//! step feeds pages in the order they go.

use lopdf::{Dictionary, Document, Object, ObjectId, Stream, dictionary};

/// Page attributes a page may inherit from its ancestors in the page tree.
/// They are copied onto each page before the page leaves its source tree.
const INHERITABLE: [&[u8]; 4] = [b"Resources", b"MediaBox", b"CropBox", b"Rotate"];

/// The pixels of one image page, ready to embed.
#[derive(Debug)]
pub enum PageImage {
    /// A baseline or progressive JPEG embedded as-is (PDF's DCTDecode), so
    /// the scanner's compression is kept without a second generation loss.
    Jpeg {
        /// The JPEG file.
        bytes: Vec<u8>,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// 1 for gray, 3 for colour.
        components: u8,
    },
    /// Decoded 8-bit samples, Flate-compressed into the PDF.
    Raw {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// `true` for one gray sample per pixel, `false` for RGB.
        gray: bool,
        /// The samples, row by row.
        samples: Vec<u8>,
    },
}

/// A PDF under construction.
pub struct PdfBuilder {
    doc: Document,
    pages_id: ObjectId,
    kids: Vec<Object>,
}

impl Default for PdfBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PdfBuilder {
    /// An empty document.
    pub fn new() -> Self {
        let mut doc = Document::with_version("1.7");
        let pages_id = doc.new_object_id();
        PdfBuilder {
            doc,
            pages_id,
            kids: Vec::new(),
        }
    }

    /// Pages added so far.
    pub fn page_count(&self) -> usize {
        self.kids.len()
    }

    /// Adds a page showing `image` at `dpi`, so that the page has the size
    /// of the paper that was scanned.
    pub fn add_image_page(&mut self, image: PageImage, dpi: f64) -> Result<(), lopdf::Error> {
        let (width, height) = match &image {
            PageImage::Jpeg { width, height, .. } | PageImage::Raw { width, height, .. } => {
                (*width, *height)
            }
        };
        let mut dict = dictionary! {
            "Type" => "XObject",
            "Subtype" => "Image",
            "Width" => i64::from(width),
            "Height" => i64::from(height),
            "BitsPerComponent" => 8,
        };
        let stream = match image {
            PageImage::Jpeg {
                bytes, components, ..
            } => {
                dict.set(
                    "ColorSpace",
                    if components == 1 {
                        "DeviceGray"
                    } else {
                        "DeviceRGB"
                    },
                );
                dict.set("Filter", "DCTDecode");
                Stream::new(dict, bytes).with_compression(false)
            }
            PageImage::Raw { gray, samples, .. } => {
                dict.set("ColorSpace", if gray { "DeviceGray" } else { "DeviceRGB" });
                let mut stream = Stream::new(dict, samples);
                stream.compress()?;
                stream
            }
        };
        let image_id = self.doc.add_object(stream);
        let points = |pixels: u32| f64::from(pixels) * 72.0 / dpi;
        let (w, h) = (points(width), points(height));
        let content = format!("q {w:.4} 0 0 {h:.4} 0 0 cm /Im0 Do Q\n");
        let mut content = Stream::new(Dictionary::new(), content.into_bytes());
        content.compress()?;
        let content_id = self.doc.add_object(content);
        let page_id = self.doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => self.pages_id,
            "MediaBox" => vec![0.into(), 0.into(), Object::Real(w as f32), Object::Real(h as f32)],
            "Resources" => dictionary! { "XObject" => dictionary! { "Im0" => image_id } },
            "Contents" => content_id,
        });
        self.kids.push(page_id.into());
        Ok(())
    }

    /// Appends every page of `source`, in its order, with everything those
    /// pages reference (fonts, images, text layers). Returns how many pages
    /// were appended.
    pub fn append_document(&mut self, mut source: Document) -> Result<usize, lopdf::Error> {
        source.renumber_objects_with(self.doc.max_id + 1);
        let page_ids: Vec<ObjectId> = source.page_iter().collect();
        for &page_id in &page_ids {
            let mut inherited = Vec::new();
            for key in INHERITABLE {
                let own = source.get_dictionary(page_id)?.has(key);
                if !own && let Some(value) = crate::page::inherited(&source, page_id, key) {
                    inherited.push((key, value.clone()));
                }
            }
            let page = source.get_dictionary_mut(page_id)?;
            for (key, value) in inherited {
                page.set(key, value);
            }
            page.set("Parent", self.pages_id);
        }
        let catalog_id = source
            .trailer
            .get(b"Root")
            .and_then(Object::as_reference)
            .ok();
        for (id, object) in std::mem::take(&mut source.objects) {
            // The source's catalog and page-tree nodes are replaced by ours;
            // anything only they referenced is pruned when finishing.
            let is_tree_node = matches!(&object, Object::Dictionary(d) if d.has_type(b"Pages"));
            if Some(id) == catalog_id || is_tree_node {
                continue;
            }
            self.doc.objects.insert(id, object);
        }
        self.doc.max_id = self.doc.max_id.max(source.max_id);
        self.kids
            .extend(page_ids.iter().map(|&id| Object::from(id)));
        Ok(page_ids.len())
    }

    /// Finishes the document with an information dictionary and returns
    /// the file's bytes. No creation date: the bytes depend only on the
    /// pages and the title, so both servers of a pair that assemble one job
    /// (accepted on both sides of a partition, at different moments) make
    /// the same document, and the shared folder refuses the second copy as
    /// this job's own instead of failing it as another document.
    pub fn finish(mut self, title: &str) -> Result<Vec<u8>, lopdf::Error> {
        let count = self.kids.len() as i64;
        self.doc.objects.insert(
            self.pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages",
                "Kids" => std::mem::take(&mut self.kids),
                "Count" => count,
            }),
        );
        let catalog_id = self.doc.add_object(dictionary! {
            "Type" => "Catalog",
            "Pages" => self.pages_id,
        });
        let info_id = self.doc.add_object(dictionary! {
            "Title" => Object::string_literal(title),
            "Producer" => Object::string_literal("scan gateway"),
        });
        self.doc.trailer.set("Root", catalog_id);
        self.doc.trailer.set("Info", info_id);
        self.doc.prune_objects();
        let mut bytes = Vec::new();
        self.doc.save_to(&mut bytes)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray_page(width: u32, height: u32) -> PageImage {
        PageImage::Raw {
            width,
            height,
            gray: true,
            samples: vec![200; (width * height) as usize],
        }
    }

    #[test]
    fn image_pages_get_the_paper_size_from_the_resolution() {
        let mut builder = PdfBuilder::new();
        builder.add_image_page(gray_page(300, 600), 150.0).unwrap();
        let bytes = builder.finish("t").unwrap();
        let doc = Document::load_mem(&bytes).unwrap();
        let page = doc.page_iter().next().unwrap();
        let media = doc.get_dictionary(page).unwrap().get(b"MediaBox").unwrap();
        let values: Vec<f32> = media
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_float().unwrap())
            .collect();
        assert_eq!(values, vec![0.0, 0.0, 144.0, 288.0]);
    }

    #[test]
    fn merged_documents_keep_page_order_and_inherited_boxes() {
        let mut first = PdfBuilder::new();
        first.add_image_page(gray_page(10, 10), 72.0).unwrap();
        first.add_image_page(gray_page(20, 10), 72.0).unwrap();
        let first = Document::load_mem(&first.finish("a").unwrap()).unwrap();

        // A source whose MediaBox lives on the page-tree node, not the page.
        let mut second = Document::with_version("1.5");
        let pages_id = second.new_object_id();
        let page_id = second.add_object(dictionary! { "Type" => "Page", "Parent" => pages_id });
        second.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages",
                "Kids" => vec![page_id.into()],
                "Count" => 1,
                "MediaBox" => vec![0.into(), 0.into(), 30.into(), 40.into()],
            }),
        );
        let catalog = second.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        second.trailer.set("Root", catalog);

        let mut merged = PdfBuilder::new();
        assert_eq!(merged.append_document(first).unwrap(), 2);
        assert_eq!(merged.append_document(second).unwrap(), 1);
        let doc = Document::load_mem(&merged.finish("m").unwrap()).unwrap();
        let widths: Vec<f32> = doc
            .page_iter()
            .map(|id| {
                let media = crate::page::inherited(&doc, id, b"MediaBox").unwrap();
                media.as_array().unwrap()[2].as_float().unwrap()
            })
            .collect();
        assert_eq!(widths, vec![10.0, 20.0, 30.0]);
    }
}
